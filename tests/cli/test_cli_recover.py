"""``recover``: one-line errors for bad input; the JSON object of a recovered run."""
import json

import pytest

from memopt_core.cli import main

FAST = ["--seq-len", "32", "--max-tokens", "128", "--gen-tokens", "0", "--no-zero-shot"]
TRAIN = ["--train-len", "32", "--tokens-per-step", "64", "--eval-every", "1", "--validation-windows", "2"]


def _error_of(capsys, argv) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, f"{argv} exited {code}"
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[-1]


@pytest.mark.parametrize("argv, fragment", [
    (["--bits", "4", "--steps", "0"], "steps 0 is out of range"),
    (["--bits", "4", "--steps", "-3"], "steps -3 is out of range"),
    (["--bits", "4", "--lr", "0"], "learning rate 0 is out of range"),
    (["--bits", "4", "--lr", "2"], "learning rate 2 is out of range"),
    (["--bits", "4", "--tokens-per-step", "100", "--train-len", "64"], "must be a multiple of the window length"),
    (["--steps", "2"], "nothing to recover: the setting neither prunes nor quantizes"),
    (["--bits", "4", "--fake"], "recovery needs packed storage"),
    (["--bits", "4", "--train-layers", "all"], "invalid choice: 'all'"),
])
def test_bad_recovery_requests(capsys, argv, fragment):
    assert fragment in _error_of(capsys, ["recover", "--model", "tiny-llama", *argv, *FAST])


@pytest.mark.slow
def test_no_layer_selected_and_text_too_short(capsys, tmp_path):
    assert "select none of them" in _error_of(capsys, ["recover", "--model", "tiny-llama", "--bits", "4", "--steps", "1",
                                                       "--train-only", "*.nothing", *TRAIN, *FAST])
    short = tmp_path / "short.txt"
    short.write_text("A few words only. " * 4, encoding="utf-8")
    message = _error_of(capsys, ["recover", "--model", "tiny-llama", "--bits", "4", "--steps", "1",
                                 "--train-text", str(short), *TRAIN, *FAST])
    assert "short.txt" in message and "are needed" in message


@pytest.mark.slow
def test_json_holds_the_run_before_recovery_and_the_curve(capsys, tmp_path):
    code = main(["recover", "--model", "tiny-llama", "--prune-ratio", "0.5", "--bits", "4", "--group-size", "32",
                 "--steps", "2", "--db", str(tmp_path / "runs.db"), "--json", *TRAIN, *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["before_recovery"].keys() == result["compressed"].keys()
    recovery = result["recovery"]
    assert recovery["steps_done"] == 2 and recovery["tokens"] == 128
    assert [p["step"] for p in recovery["curve"]] == [0, 1, 2]
    assert recovery["data"]["text"] == "both" and recovery["checks"]["same_bytes"]
    assert "step 2/2" in captured.err  # progress on stderr, one line per evaluation
    assert main(["recover", "--model", "tiny-llama", "--prune-ratio", "0.5", "--bits", "4", "--group-size", "32",
                 "--steps", "2", "--db", str(tmp_path / "runs.db"), "--json", *TRAIN, *FAST]) == 0
    again = capsys.readouterr()
    assert "answered from the results store" in again.err and json.loads(again.out) == result
