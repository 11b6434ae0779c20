"""The formats comparison charts and the histogram's rotation/clip traces, checked on the figures."""
from __future__ import annotations

import json
import math

import pandas as pd

from memopt_core import charts
from memopt_core.charts import formats as format_charts
from test_charts import layer_rows


def formats_table() -> pd.DataFrame:
    rows = []
    for setting, fmt, method, rotate, bpw, ppl in [
            ("W4A16 g32 sym", "int", "rtn", "none", 4.5, 17.8), ("NF4 b64", "nf4", "rtn", "none", 4.5, 16.9),
            ("MXFP4 b32", "mxfp4", "rtn", "none", 4.25, 19.5), ("Q4_K", "q4_k", "rtn", "none", 5.2, 14.1),
            ("NF4 b64 dq", "nf4", "rtn", "none", 4.127, 17.0), ("W3A16 g64 sym rot", "int", "rtn", "hadamard", 3.28, math.inf),
            ("GPTQ W4A16 g64 sym", "int", "gptq", "none", 4.25, 15.0)]:
        rows.append({"setting": setting, "kind": "causal-lm", "format": fmt, "quant_method": method, "rotate": rotate,
                     "bits_per_weight": bpw, "perplexity": ppl, "baseline_perplexity": 13.0,
                     "stored_bytes": int(bpw * 1000), "measured_bytes": None})
    return pd.DataFrame(rows)


def test_format_tradeoff_plots_stored_bits_and_the_pareto_front():
    table = formats_table()
    built = format_charts.format_tradeoff(table)
    json.loads(built.to_json())  # serialises: no infinities left
    markers = {trace.name: trace for trace in built.data if trace.name != "Pareto front"}
    assert set(markers) == {"integer grid", "NF4", "FP4 microscaling", "k-quants", "integer grid + rotation",
                            "GPTQ (integer grid)"}
    front = next(trace for trace in built.data if trace.name == "Pareto front")
    # fewer bits or better perplexity than everything else: NF4 dq (4.127), MXFP4? no (worse and more bits than dq),
    # GPTQ g64 (4.25, 15.0), Q4_K (5.2, 14.1); the diverged rotated W3 is never on it.
    assert list(front.x) == [4.127, 4.25, 5.2]
    assert built.layout.shapes[0].y0 == 13.0  # the original's perplexity
    assert list(markers["integer grid + rotation"].y) == [None]  # diverged: a gap, named in the hover


def test_layer_error_pair_shares_one_scale_and_shows_the_difference():
    a = layer_rows()
    b = [{**row, "sqnr_db": row["sqnr_db"] + 2.0} for row in a]
    b[0]["sqnr_db"] = math.inf
    figure = format_charts.layer_error_pair(a, b, "NF4 b64", "MXFP4 b32")
    left, right, difference = figure.data
    assert left.zmin == right.zmin and left.zmax == right.zmax
    finite = [v for row in difference.z for v in row if v == v]
    assert finite and all(abs(v - 2.0) < 1e-9 for v in finite)  # B is 2 dB better everywhere it is finite
    assert sum(1 for row in right.z for v in row if v != v) == 1  # the exact layer is blank, not infinite


def test_histogram_draws_the_rotated_weights_and_the_clip():
    figure = charts.weight_histogram([0.1, -0.2, 0.3], [0.1, -0.25, 0.25], grid=[-0.3, 0.0, 0.3], layer="l",
                                     rotated=[0.05, -0.1, 0.2], clip=[-0.25, 0.25])
    names = [trace.name for trace in figure.data]
    assert names == ["original", "compressed", "rotated W Q (what is quantized)", "quantization grid",
                     "grid lines"]
    clips = [shape for shape in figure.layout.shapes if shape.line.color == "#E45756"]
    assert sorted(shape.x0 for shape in clips) == [-0.25, 0.25]
