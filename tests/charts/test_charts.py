"""Chart contents, checked on the plotly figures (no Streamlit, no model)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from memopt_core import charts
from memopt_core.runs.pareto import mark_pareto

MODULES = ("self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj", "mlp.down_proj")


def layer_rows(blocks: int = 3) -> list[dict]:
    rows = []
    for block in range(blocks):
        for index, module in enumerate(MODULES):
            rows.append({"name": f"model.layers.{block}.{module}", "shape": [64, 32], "block": block,
                         "module_type": module, "sparsity": 0.1 * index + 0.01 * block, "bits": 4.25,
                         "dense_bytes": 8192, "stored_bytes": 1088 + block, "sqnr_db": 20.0 + block + index})
    return rows


def sweep_table() -> pd.DataFrame:
    rows = []
    for ratio, bits, group, ppl, stored in [(0.0, 16, None, 10.0, 1000), (0.0, 8, 128, 10.1, 600),
                                            (0.0, 4, 128, 12.0, 400), (0.0, 4, 32, 11.0, 450),
                                            (0.5, 16, None, 30.0, 1000), (0.5, 4, 128, 40.0, 400),
                                            (0.5, 4, 32, math.inf, 450)]:
        rows.append({"setting": f"r{ratio} b{bits} g{group}", "model": "m", "kind": "causal-lm",
                     "prune_method": "magnitude" if ratio else "none", "prune_pattern": "unstructured",
                     "prune_ratio": ratio, "bits": bits, "group_size": group, "perplexity": ppl,
                     "kl_divergence": 0.1, "top1_agreement": 0.9, "stored_bytes": stored, "measured_bytes": None,
                     "bits_per_weight": bits + 0.25, "x_smaller": 1000 / stored, "sparsity": ratio,
                     "simulated": False})
    return mark_pareto(pd.DataFrame(rows))


def as_json(figure) -> dict:
    return json.loads(figure.to_json())  # also proves the figure serialises (no infinities)


def test_sparsity_by_layer_has_one_bar_per_targeted_layer():
    rows = layer_rows()
    figure = charts.sparsity_by_layer(rows)
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert sum(len(trace.y) for trace in bars) == len(rows)
    assert {trace.name for trace in bars} == set(MODULES)
    q_proj = next(trace for trace in bars if trace.name == "self_attn.q_proj")
    assert list(q_proj.y) == pytest.approx([0.0, 0.01, 0.02])
    as_json(figure)


def test_bytes_by_layer_pairs_dense_and_stored_bytes():
    rows = layer_rows(2)
    before, after = charts.bytes_by_layer(rows).data
    assert list(before.x) == [row["name"] for row in rows] == list(after.x)
    assert list(before.y) == [8192] * len(rows)
    assert list(after.y) == [row["stored_bytes"] for row in rows]


def test_weight_histogram_bins_every_value_and_marks_the_grid():
    rng = np.random.default_rng(0)
    before = rng.normal(0, 0.05, 5000)
    grid = np.linspace(-0.15, 0.15, 16)
    after = grid[np.abs(before[:, None] - grid[None, :]).argmin(axis=1)]  # rounded to the grid
    figure = charts.weight_histogram(before, after, grid, "layer.0")
    original, compressed, levels, lines = figure.data
    assert sum(original.y) == len(before) and sum(compressed.y) == len(after)
    assert list(original.x) == list(compressed.x)  # shared bins
    assert list(levels.x) == pytest.approx(list(grid))
    tallest = max(max(original.y), max(compressed.y))
    assert list(lines.x) == [x for level in grid for x in (pytest.approx(level), pytest.approx(level), None)]
    assert list(lines.y) == [0, tallest, None] * len(grid)  # one dotted line per level, up to the tallest bar
    assert len(original.y) == 120  # the counts travel to the browser, not the 5000 values
    assert len(figure.to_json()) < 20_000


def test_weight_histogram_draws_fine_grids_as_markers_only():
    grid = np.linspace(-1, 1, 256)
    figure = charts.weight_histogram([0.0, 0.5], [0.0, 0.5], grid, "layer")
    assert len(figure.data[2].x) == 256 and len(figure.data) == 3  # the markers, no lines


def test_tradeoff_pareto_trace_holds_exactly_the_pareto_rows():
    table = sweep_table()
    figure = charts.tradeoff_memory(table)
    front = next(trace for trace in figure.data if trace.name == "Pareto front")
    expected = table[table["pareto"]].sort_values("stored_bytes")
    assert len(front.x) == int(table["pareto"].sum()) == len(expected)
    assert list(front.y) == pytest.approx(list(expected["perplexity"]))
    lines = [trace for trace in figure.data if trace.name != "Pareto front"]
    assert sum(len(trace.x) for trace in lines) == len(table)
    assert {trace.name for trace in lines} == {"not pruned", "magnitude 50%"}


def test_tradeoff_hover_names_every_figure_and_survives_a_diverged_point():
    figure = charts.tradeoff_memory(sweep_table())
    pruned = next(trace for trace in figure.data if trace.name == "magnitude 50%")
    for label in ("setting", "perplexity", "KL (nats/token)", "top-1 agreement", "stored (MiB)",
                  "bits per weight", "x smaller", "sparsity"):
        assert f"{label}: %{{customdata" in pruned.hovertemplate
    assert None in list(pruned.y)  # the infinite perplexity is a gap, not a broken axis
    assert any("inf (diverged)" in row for row in pruned.customdata)
    assert figure.layout.yaxis.type == "linear"  # 10 to 40: a linear axis reads best
    as_json(figure)


def test_tradeoff_uses_a_log_axis_for_a_wide_range_of_perplexities():
    table = sweep_table()
    table.loc[5, "perplexity"] = 1500.0
    assert charts.tradeoff_memory(table).layout.yaxis.type == "log"


def test_tradeoff_can_overlay_sweeps():
    table = sweep_table().assign(sweep=["a"] * 4 + ["b"] * 3)
    figure = charts.tradeoff_memory(table, group_by="sweep")
    assert [trace.name for trace in figure.data] == ["a", "b", "Pareto front"]
    assert figure.data[0].mode == "markers"  # a sweep's points are a cloud, not a curve


def test_quality_vs_bits_has_one_line_per_pruning_and_group_size():
    figure = charts.quality_vs_bits(sweep_table())
    assert sorted(trace.name for trace in figure.data) == ["magnitude 50%, g128", "magnitude 50%, g32",
                                                           "not pruned, g128", "not pruned, g32"]
    line = next(trace for trace in figure.data if trace.name == "not pruned, g128")
    assert list(line.x) == [4, 8, 16] and list(line.y) == pytest.approx([12.0, 10.1, 10.0])


def test_ratio_bits_heatmap_averages_over_group_sizes_and_blanks_divergence():
    figure = charts.ratio_bits_heatmap(sweep_table())
    heatmap = figure.data[0]
    assert list(heatmap.y) == ["not pruned", "magnitude 50%"] and list(heatmap.x) == ["4", "8", "16"]
    values = np.array(heatmap.customdata, dtype=float)
    assert values[0, 0] == pytest.approx(11.5)  # mean of g128 (12.0) and g32 (11.0)
    assert values[1, 0] == pytest.approx(40.0)  # the diverged g32 point is left out
    assert np.isnan(values[1, 1])  # 8 bits was not run with pruning
    as_json(figure)


def test_layer_heatmap_is_module_by_block_and_marks_exact_layers():
    rows = layer_rows(3)
    rows[0]["sqnr_db"] = math.inf  # an exact reconstruction
    heatmap = charts.layer_heatmap(rows).data[0]
    assert list(heatmap.x) == ["block 0", "block 1", "block 2"] and list(heatmap.y) == list(MODULES)
    z = np.array(heatmap.z, dtype=float)
    assert z.shape == (len(MODULES), 3)
    assert np.isnan(z[0, 0]) and heatmap.text[0][0] == "exact"
    assert z[1, 2] == pytest.approx(20.0 + 2 + 1)
    as_json(charts.layer_heatmap(rows))


def test_layer_heatmap_orders_blocks_numerically():
    heatmap = charts.layer_heatmap(layer_rows(12), "sparsity").data[0]
    assert list(heatmap.x) == [f"block {i}" for i in range(12)]


def test_memory_stack_sums_to_the_total():
    estimate = {"weights_bytes": 3 * 2**30, "kv_cache_bytes": 2**30, "activation_bytes": 2**29,
                "total_bytes": int(4.5 * 2**30)}
    figure = charts.memory_stack(estimate)
    assert sum(trace.y[0] for trace in figure.data) == pytest.approx(4.5)
    assert "4.50 GiB" in figure.layout.title.text


def test_weight_histogram_keeps_outliers_in_the_end_bins():
    before = np.concatenate([np.random.default_rng(1).normal(0, 0.01, 9990), [5.0] * 10])
    figure = charts.weight_histogram(before, before, (), "layer")
    original = figure.data[0]
    assert sum(original.y) == len(before)  # every weight is counted ...
    assert max(original.x) < 1.0  # ... yet the axis shows the bulk, not the outliers
    assert original.y[-1] == 10


def test_log_ticks_are_round_numbers_around_the_data():
    assert charts.log_ticks(11.8, 270) == [10, 20, 50, 100, 200]
    table = sweep_table()
    table.loc[5, "perplexity"] = 1500.0
    assert list(charts.tradeoff_memory(table).layout.yaxis.tickvals) == [10, 20, 50, 100, 200, 500, 1000, 2000]


def test_pruning_settings_keep_their_colour_across_charts():
    table = sweep_table()
    memory = {t.name: t.marker.color for t in charts.tradeoff_memory(table).data if t.name != "Pareto front"}
    lines = charts.quality_vs_bits(table).data
    bits = {t.name.split(",")[0]: t.marker.color for t in lines}
    assert memory == bits == {"not pruned": charts.series_color(0), "magnitude 50%": charts.series_color(1)}
    dashes = {t.name.split(", ")[1]: t.line.dash for t in lines}
    assert dashes == {"g32": "solid", "g128": "dash"}  # group size by dash, pruning by colour


def test_weight_histogram_zooms_on_the_weights_when_the_grid_is_far_wider():
    weights = np.random.default_rng(2).normal(0, 0.01, 2000)
    wide_grid = np.linspace(-1.5, 1.5, 16)  # one outlier in the first group stretched its range
    bars = charts.weight_histogram(weights, weights, wide_grid, "layer").data[0]
    assert max(bars.x) < 0.1 and sum(bars.y) == len(weights)


def test_quality_vs_bits_switches_to_a_log_axis_for_diverging_settings():
    table = sweep_table()
    assert charts.quality_vs_bits(table).layout.yaxis.type == "linear"
    table.loc[5, "perplexity"] = 1500.0
    assert charts.quality_vs_bits(table).layout.yaxis.type == "log"


def test_ratio_bits_heatmap_writes_the_value_in_each_cell():
    heatmap = charts.ratio_bits_heatmap(sweep_table()).data[0]
    assert heatmap.text[0][0] == "11.5" and heatmap.text[1][1] == ""


def test_convergence_spec_draws_the_band_where_it_exists_and_marks_the_exact_figure():
    from memopt_core.charts.convergence import convergence

    estimates = [{"tokens": 511, "windows": 1, "total_windows": 4, "perplexity_ratio": 1.08, "ratio_ci95": None,
                  "exact": False},
                 {"tokens": 1022, "windows": 2, "total_windows": 4, "perplexity_ratio": float("inf"),
                  "ratio_ci95": [1.0, float("nan")], "exact": False},
                 {"tokens": 2044, "windows": 4, "total_windows": 4, "perplexity_ratio": 1.06,
                  "ratio_ci95": [1.05, 1.07], "exact": True}]
    spec = convergence(estimates)
    rows = spec["data"]["values"]
    assert [row["tokens"] for row in rows] == [511, 1022, 2044]
    assert [(row["estimate"], row["low"], row["high"]) for row in rows] == [(1.08, None, None), (None, 1.0, None),
                                                                           (1.06, 1.05, 1.07)]
    assert [row["exact"] for row in rows] == [False, False, True]
    band, line, exact = spec["layer"]
    assert (band["encoding"]["y"]["field"], band["encoding"]["y2"]["field"]) == ("low", "high")
    assert exact["transform"] == [{"filter": "datum.exact"}]
    assert line["encoding"]["x"]["scale"]["domain"] == [0, round(2044 * 1.02)]  # all 4 windows from the start
    assert json.loads(json.dumps(spec, allow_nan=False)) == spec  # no infinity or NaN reaches the browser
