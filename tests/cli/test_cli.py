"""The CLI: bad input ends in one line on stderr and a non-zero exit, never a traceback."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memopt_core.cli import main

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--seq-len", "32", "--max-tokens", "128", "--gen-tokens", "2", "--no-zero-shot"]


def _error_of(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0, f"{argv} succeeded"
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("argv, fragment", [
    (["--bits", "1"], "bits 1 is not supported"),
    (["--bits", "9"], "bits 9 is not supported"),
    (["--prune-ratio", "1.5"], "prune ratio 1.5 is out of range"),
    (["--prune-ratio", "-0.1"], "prune ratio -0.1 is out of range"),
    (["--bits", "4", "--group-size", "0"], "group size 0"),
    (["--bits", "4", "--group-size", "-8"], "group size -8"),
    (["--prune-method", "random"], "prune method 'random' is not supported"),
    (["--device", "tpu"], "device 'tpu' is not supported"),
    (["--prune-ratio", "half"], "invalid float value"),
])
def test_bad_settings(capsys, argv, fragment):
    assert fragment in _error_of(capsys, ["run", "--model", "tiny-llama", *argv])


def test_absent_device_is_an_error_not_a_fallback(capsys):
    if "cuda" in __import__("memopt_core.loading.devices", fromlist=["x"]).available_devices():
        pytest.fail("this test expects a machine without CUDA")  # pragma: no cover
    assert "not available" in _error_of(capsys, ["run", "--model", "tiny-llama", "--device", "cuda"])


def test_unknown_hub_model_while_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _error_of(capsys, ["run", "--model", "no-such-org/no-such-model", *FAST])
    assert "no-such-org/no-such-model" in message


def test_folder_without_a_model(capsys, tmp_path):
    assert "holds no model" in _error_of(capsys, ["run", "--model", str(tmp_path), *FAST])


def test_empty_and_too_short_texts(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert "empty" in _error_of(capsys, ["run", "--model", "tiny-llama", "--eval-text", str(empty), *FAST])
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    message = _error_of(capsys, ["run", "--model", "tiny-llama", "--eval-text", str(short), *FAST])
    assert "tokens" in message


def test_missing_text_file(capsys, tmp_path):
    message = _error_of(capsys, ["run", "--model", "tiny-llama", "--eval-text", str(tmp_path / "nope.txt"), *FAST])
    assert "nope.txt" in message


@pytest.mark.slow
def test_run_json_has_the_documented_fields(capsys):
    code = main(["run", "--model", "tiny-llama", "--bits", "4", "--group-size", "32", "--prune-ratio", "0.5",
                 "--json", *FAST])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("model", "config", "baseline", "compressed", "memory", "sparsity", "layers", "timings"):
        assert key in data
    for key in ("perplexity", "top1_accuracy"):
        assert key in data["baseline"] and key in data["compressed"]
    assert {"kl_divergence", "top1_agreement"} <= set(data["compressed"])
    assert {"dense_bytes", "stored_bytes", "bits_per_weight", "measured_bytes"} <= set(data["memory"])
    assert {"name", "shape", "sparsity", "bits", "stored_bytes"} <= set(data["layers"][0])
    assert data["model"]["is_random"] is True
    assert data["memory"]["bits_per_weight"] == pytest.approx(4.5)


def test_stream_prints_each_window_then_the_result(capsys):
    """--stream: one JSON line per scored window (128 tokens in windows of 32: 4), then the result;
    the last estimate is the exact figure of the result."""
    assert main(["run", "--model", "tiny-llama", "--bits", "4", "--group-size", "32", "--stream", *FAST]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    estimates, result = lines[:-1], lines[-1]
    assert [e["tokens"] for e in estimates] == [31, 62, 93, 124]
    for key in ("perplexity", "perplexity_ci95", "kl_divergence", "kl_ci95", "top1_agreement"):
        assert key in estimates[0]
    assert [e["exact"] for e in estimates] == [False, False, False, True]
    assert estimates[-1]["perplexity"] == pytest.approx(result["compressed"]["perplexity"], rel=1e-12)
    assert estimates[-1]["kl_divergence"] == pytest.approx(result["compressed"]["kl_divergence"], rel=1e-12)
    assert result["compressed"]["exact"] is True and "label" not in result["compressed"]


@pytest.mark.slow
def test_target_ci_stops_early_with_an_estimate(capsys):
    """8-bit barely moves the loss: +-50% on the ratio is reached long before the 16th window."""
    argv = ["run", "--model", "tiny-llama", "--bits", "8", "--target-ci", "0.5", "--json",
            "--seq-len", "32", "--max-tokens", "512", "--gen-tokens", "0", "--no-zero-shot"]
    assert main(argv) == 0
    compressed = json.loads(capsys.readouterr().out)["compressed"]
    assert compressed["exact"] is False and compressed["tokens"] < 16 * 31
    assert compressed["label"] == f"estimate from {compressed['tokens']:,} tokens"


def test_target_ci_must_be_a_fraction(capsys):
    assert "--target-ci 1.5" in _error_of(capsys, ["run", "--model", "tiny-llama", "--target-ci", "1.5", *FAST])


def test_models_lists_the_bundled_models(capsys):
    assert main(["models", "--json"]) == 0
    keys = {m["key"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert keys == {"smollm2-135m", "minilm-l6", "tiny-llama", "tiny-bert"}


@pytest.mark.slow
def test_process_exit_status_and_stderr():
    """The real entry point: exit status 2 and one stderr line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "memopt_core", "run", "--model", "tiny-llama", "--bits", "9"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: bits 9")
