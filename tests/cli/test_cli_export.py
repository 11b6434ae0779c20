"""``export`` from the command line: contradictions and bad paths in one line (nothing written), and
a ``run --save`` folder exported and verified with the JSON keys the issue names."""
import json

import pytest

from memopt_core.cli import main

FAST = ["--seq-len", "32", "--max-tokens", "128", "--gen-tokens", "0", "--no-zero-shot"]


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("extra, fragment", [
    (["--type", "Q4_1", "--bits", "8"], "--type Q4_1 means W4A16 g32 asym-fmin; --bits 8 contradicts it"),
    (["--type", "Q4_0", "--asymmetric"], "--type Q4_0 means W4A16 g32 sym; --asymmetric True contradicts it"),
    (["--type", "Q8_0", "--group-size", "64"], "--group-size 64 contradicts it"),
    (["--type", "Q4_K"], "k-quant (super-blocks of 256 weights)"),
    (["--type", "W4A16"], "gguf type 'W4A16' is not supported"),
])
def test_contradicting_or_unknown_types_are_refused(capsys, tmp_path, extra, fragment):
    error = _one_line_error(capsys, ["export", "--model", "tiny-llama", "--format", "gguf", "--out",
                                     str(tmp_path / "out"), *extra, *FAST])
    assert fragment in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, fragment", [
    (["--bits", "4", "--asymmetric", "--zero-point", "float", "--group-size", "32"], "cannot hold a float minimum"),
    (["--bits", "4", "--group-size", "24"], "groups of 24 hold no MatMulNBits block"),
    (["--bits", "8"], "holds codes of at most 4 bits"),
])
def test_onnx_codes_refuse_settings_matmulnbits_cannot_hold(capsys, tmp_path, extra, fragment):
    error = _one_line_error(capsys, ["export", "--model", "tiny-llama", "--format", "onnx", "--type", "int4-codes",
                                     "--out", str(tmp_path / "out"), *extra, *FAST])
    assert fragment in error
    assert not (tmp_path / "out").exists()


def test_existing_destination_and_flags_with_from_are_refused(capsys, tmp_path):
    (tmp_path / "taken").mkdir()
    assert "already exists" in _one_line_error(capsys, ["export", "--model", "tiny-llama", "--format", "onnx",
                                                        "--out", str(tmp_path / "taken"), *FAST])
    error = _one_line_error(capsys, ["export", "--from", str(tmp_path / "taken"), "--format", "gguf",
                                     "--out", str(tmp_path / "new"), "--bits", "4", *FAST])
    assert "--from exports the saved model as it is" in error


@pytest.mark.parametrize("flags", [["--quant-method", "gptq"], ["--prune-method", "wanda"], ["--range", "clip-search"],
                                   ["--exclude", "*down_proj"], ["--calib-samples", "8"], ["--no-act-order"]])
def test_from_refuses_every_compression_flag(capsys, tmp_path, flags):
    error = _one_line_error(capsys, ["export", "--from", str(tmp_path / "saved"), "--format", "gguf",
                                     "--out", str(tmp_path / "new"), *flags, *FAST])
    assert f"--from exports the saved model as it is; {flags[0]} cannot change it" in error
    assert not (tmp_path / "new").exists()


def test_an_architecture_gguf_cannot_describe_is_refused(capsys, tmp_path):
    error = _one_line_error(capsys, ["export", "--model", "tiny-bert", "--format", "gguf", "--out",
                                     str(tmp_path / "out"), *FAST])
    assert "GGUF export describes Llama-architecture causal LMs" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_type_alone_sets_the_setting_and_the_json_holds_the_issue_keys(capsys, tmp_path):
    assert main(["export", "--model", "tiny-llama", "--format", "gguf", "--type", "Q8_0", "--out",
                 str(tmp_path / "q8"), "--json", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["type"], report["memopt"]["setting"]) == ("Q8_0", "W8A16 g32 sym")
    assert report["layers_exact"] == "14 of 14" and report["roundtrip"] is None
    assert report["files"][0]["bytes"] == (tmp_path / "q8" / "model.gguf").stat().st_size == report["file_bytes"]
    assert report["memopt"]["perplexity"] > 1


@pytest.mark.slow
def test_saved_run_exports_to_gguf_and_verifies(capsys, tmp_path):
    saved = tmp_path / "saved"
    assert main(["run", "--model", "tiny-llama", "--bits", "4", "--group-size", "32", "--asymmetric",
                 "--zero-point", "float", "--save", str(saved), *FAST]) == 0
    capsys.readouterr()
    assert main(["export", "--from", str(saved), "--format", "gguf", "--out", str(tmp_path / "gguf"),
                 "--verify", "--json", *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"format", "type", "files", "file_bytes", "memopt", "roundtrip"} <= set(report)
    assert (report["format"], report["type"]) == ("gguf", "Q4_1")
    assert report["files"] == [{"path": str(tmp_path / "gguf" / "model.gguf"), "bytes": report["file_bytes"]}]
    assert report["roundtrip"]["max_abs_weight_error"] == 0.0
    assert report["roundtrip"]["perplexity"] == pytest.approx(report["memopt"]["perplexity"], rel=0.005)
    assert report["memopt"]["recorded_perplexity"] == pytest.approx(report["memopt"]["perplexity"], rel=1e-6)
