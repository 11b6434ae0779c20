"""CLI flags of the number formats: run --format/--double-quant/--rotate/--range, sweep --formats."""
import json

import pandas as pd
import pytest

from memopt_core.cli import main
from memopt_core.primitives.formats.registry import format_nbytes

FAST = ["--seq-len", "32", "--max-tokens", "128", "--gen-tokens", "0", "--no-zero-shot"]


def _error_of(capsys, argv) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["--format", "nf4", "--bits", "3"], "--bits 3 does not apply to format nf4"),
    (["--format", "q4_k", "--group-size", "32"], "--group-size applies to the integer grid"),
    (["--format", "mxfp4", "--quant-method", "gptq"], "GPTQ uses the integer grid"),
    (["--bits", "4", "--double-quant"], "double quantization applies to format nf4"),
    (["--format", "nf4", "--range", "percentile"], "applies to the integer grid"),
    (["--bits", "4", "--rotate", "hadamard", "--prune-ratio", "0.5"], "prune or rotate"),
    (["--format", "fp4"], "invalid choice: 'fp4'"),
])
def test_bad_format_flags(capsys, argv, fragment):
    assert fragment in _error_of(capsys, ["run", "--model", "tiny-llama", *argv])


@pytest.mark.parametrize("argv", [["--format", "nf4"], ["--bits", "4", "--rotate", "hadamard"]])
def test_recovery_refuses_formats_it_cannot_train(capsys, argv):
    assert "recovery trains the integer grid" in _error_of(capsys, ["recover", "--model", "tiny-llama", *argv])


def test_run_json_names_the_format_and_counts_every_scale_byte(capsys):
    assert main(["run", "--model", "tiny-llama", "--format", "nf4", "--double-quant", "--json", *FAST]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["quant"]["format"] == "nf4" and data["config"]["quant"]["double_quant"] is True
    layers = data["layers"]
    expected = sum(format_nbytes("nf4", *l["shape"], double_quant=True) for l in layers)
    numel = sum(l["shape"][0] * l["shape"][1] for l in layers)
    assert data["memory"]["bits_per_weight"] == pytest.approx(8 * expected / numel)
    assert {l["layout"] for l in layers} == {"nf4"}


@pytest.mark.slow
def test_sweep_takes_formats_as_an_axis(tmp_path, capsys):
    code = main(["sweep", "--model", "tiny-llama", "--formats", "int,nf4,mxfp4,q4_k", "--bits", "4",
                 "--group-sizes", "32", "--db", str(tmp_path / "runs.db"), "--json", *FAST])
    assert code == 0
    table = pd.DataFrame(json.loads(capsys.readouterr().out)["rows"])
    assert table["setting"].tolist() == ["W4A16 g32 sym", "NF4 b64", "MXFP4 b32", "Q4_K"]
    assert table["format"].tolist() == ["int", "nf4", "mxfp4", "q4_k"]
    bpw = dict(zip(table["format"], table["bits_per_weight"]))
    assert bpw["mxfp4"] == 4.25 and bpw["nf4"] == 4.5 and bpw["q4_k"] == 5.5  # tiny rows of 64: Q4_K falls back to Q5_0
