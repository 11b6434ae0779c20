"""Fuzzing the command line: whatever the arguments, the CLI answers 0, or a non-zero code with exactly
one stderr line ``error: ...``; never a traceback, never an 'internal error'.

Arguments are drawn from numbers out of range, wrong types, odd strings (unicode, empty, '-', '--',
NUL, very long) and paths that do not exist or are not models. ``main`` runs in-process; runs
that pass validation do load and run the model for real, on tiny models with the evaluation and
calibration clamped to a few windows, so a hundred examples stay fast. A few fixed calls run
end to end unclamped, and a few through a subprocess.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memopt_core.cli import main
from memopt_core.cli import run as cli_run
from memopt_core.cli import sweep as cli_sweep
from memopt_core.compression import memory
from memopt_core.config import CalibConfig
from memopt_core.loading.models import REMOTE_CODE_WARNING

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
_REMOTE_CODE_PREFIX = REMOTE_CODE_WARNING.split("{")[0]


# the files and folders the paths are drawn from --------------------------------------------------------

def _tiny_local_folder(folder: Path) -> None:
    """A saved tiny Llama with SmolLM2's tokenizer: a local model that loads in a second."""
    from transformers import AutoTokenizer

    from memopt_core.loading import bundled
    from tiny_models import make_tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(bundled.smollm2_tokenizer_folder())
    make_tiny_llama(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "empty").mkdir()
    (root / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    (root / "short.txt").write_text("two words")
    (root / "latin1.txt").write_bytes("caf\xe9 na\xefve r\xe9sum\xe9 ".encode("latin-1") * 50)
    (root / "big.txt").write_bytes(b"a " * (3 * 2**20))  # 6 MiB: over the 5 MB limit
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text("{not json")
    (root / "absurd-config").mkdir()
    (root / "absurd-config" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "hidden_size": 10**6, "num_hidden_layers": 1000, "num_attention_heads": 8,
         "intermediate_size": 10**6, "vocab_size": 10**6}))
    (root / "list-config.json").write_text("[1, 2, 3]")
    (root / "garbage.db").write_bytes(b"not a database" * 100)
    (root / "out-file").write_text("a file an --out may overwrite")
    _tiny_local_folder(root / "local")
    return {name: str(root / name) for name in ("empty", "text.txt", "short.txt", "latin1.txt", "big.txt",
                                                "bad-config", "absurd-config", "list-config.json", "garbage.db",
                                                "local", "out-file")} | {
        "missing": str(root / "missing" / "nowhere"), "root": str(root), "db": str(root / "runs.db"),
        "csv": str(root / "table.csv"), "save": str(root / "saved")}


# value strategies --------------------------------------------------------------------------------------

ODD = st.sampled_from(["", " ", "-", "--", "-1", "é", "模型", "🤖", "a" * 5000, "\x00", "nan", "inf", "-inf",
                       "1e309", "0x10", "1,2", "None", "true", "../..", "~", "/", ".", "con", "\t\n"])
INTS = st.one_of(st.sampled_from([-(2**63), -1, 0, 1, 2, 3, 7, 8, 16, 31, 32, 64, 4096, 32769, 10**12, 2**64]),
                 st.integers(-1000, 1000)).map(str)
FLOATS = st.one_of(st.sampled_from(["0", "0.0", "-0.0", "0.25", "0.5", "0.95", "0.951", "1", "1.5", "-0.1", "nan",
                                    "inf", "1e-300"]), st.floats(allow_nan=True, allow_infinity=True).map(str))
TEXT = st.text(max_size=20)


def anything() -> st.SearchStrategy[str]:
    return st.one_of(ODD, INTS, FLOATS, TEXT)


Option = tuple[st.SearchStrategy[str], st.SearchStrategy[str]]  # (plausible values, wild values)


def opt(plausible: list[str], *wild: st.SearchStrategy[str]) -> Option:
    return st.sampled_from(plausible), st.one_of(*wild, ODD)


def option_values(places: dict[str, str]) -> dict[str, dict[str, Option]]:
    """Per command: option -> (plausible values, wild values). Plausible ones let runs reach the model."""
    paths = lambda *keys: st.sampled_from([places[k] for k in keys])  # noqa: E731
    csv = lambda values: st.lists(st.one_of(values, ODD), max_size=3).map(",".join)  # noqa: E731
    model = opt(["tiny-llama"] * 4 + ["tiny-bert", places["local"], places["save"]],
                st.sampled_from(["memopt-test/none", "gpt2", "smollm2", "TINY-LLAMA"]),
                paths("missing", "empty", "text.txt", "bad-config", "absurd-config", "root"))
    text = opt(["wikipedia", "news", places["text.txt"]], st.sampled_from(["both"]),
               paths("short.txt", "latin1.txt", "big.txt", "empty", "missing"))
    common = {"--model": model, "--device": opt(["cpu", "auto"], st.sampled_from(["cuda", "cuda:7", "mps", "tpu"])),
              "--dtype": opt(["float32", "bfloat16"], st.sampled_from(["int8", "float64"])),
              "--seq-len": opt(["8", "16", "32"], INTS, FLOATS), "--max-tokens": opt(["32", "64"], INTS),
              "--gen-tokens": opt(["0", "2"], INTS), "--eval-text": text,
              "--group-size": opt(["16", "32", "64"], INTS), "--zero-point": opt(["int", "float"]),
              "--range": opt(["minmax", "clip-search"]), "--prompt": opt(["Hello", "é 模型 🤖"], TEXT),
              "--kl-top-k": opt(["0", "8", "64"], INTS)}
    bits = ["16", "8", "4", "3", "2", "fp16", "bf16", "none"]
    prunes = ["magnitude", "magnitude-global", "l2-structured", "wanda", "sparsegpt", "2:4", "4:8"]
    run = {**common, "--bits": opt(bits, INTS, st.sampled_from(["1", "7", "32", "4.0"])),
           "--prune-method": opt(prunes, st.sampled_from(["3:4", "random"])),
           "--prune-ratio": opt(["0", "0.25", "0.5", "0.95"], FLOATS),
           "--prune-pattern": opt(["unstructured", "2:4", "4:8"]), "--quant-method": opt(["rtn", "gptq"]),
           "--calib-text": text, "--calib-samples": opt(["1", "2"], INTS), "--calib-len": opt(["8", "16"], INTS),
           "--calib-seed": opt(["0", "7"], INTS),
           "--include": opt(["*.mlp.*", "*self_attn*", "lm_head"], st.sampled_from(["nothing*", "[", "*"])),
           "--exclude": opt(["*.mlp.*", "*q_proj"], st.sampled_from(["*", "]"])),
           "--save": opt([places["save"]], paths("text.txt", "empty", "bad-config", "missing", "root"))}
    sweep_options = {**common, "--bits": opt(["16,4", "8", "4,2", "fp16,8"], csv(st.sampled_from(bits + ["1"]))),
                     "--prune-method": opt(["magnitude", "2:4", "magnitude,wanda"], csv(st.sampled_from(prunes))),
                     "--quant-method": opt(["rtn", "gptq", "rtn,gptq"], csv(st.sampled_from(["rtn", "gptq", "awq"]))),
                     "--prune-ratios": opt(["0", "0,0.5"], csv(FLOATS)), "--group-sizes": opt(["32", "32,64"], csv(INTS)),
                     "--db": opt([places["db"]], paths("garbage.db", "empty", "text.txt", "missing")),
                     "--name": opt(["fuzz"], TEXT), "--out": opt([places["csv"]], paths("empty", "out-file", "root", "missing"))}
    estimate = {"--preset": opt(["llama-3-8b", "gpt2", "minilm-l6"], st.sampled_from(["llama", "LLAMA-3-8B"])),
                "--config": opt([places["local"]], paths("bad-config", "absurd-config", "list-config.json",
                                                         "text.txt", "empty", "missing", "latin1.txt")),
                "--model": model, "--bits": opt(bits[:5], INTS), "--context": opt(["1", "2048"], INTS),
                "--group-size": opt(["per-channel", "g128", "0", "none", "32"], INTS),
                "--sparsity": opt(["0", "0.5"], FLOATS), "--sparsity-format": opt(["dense", "bitmask"]),
                "--batch": opt(["1", "8"], INTS), "--kv-bits": opt(["16", "8", "4"], INTS),
                "--base-bytes": opt(["1", "2", "4"], INTS)}
    return {"run": run, "sweep": sweep_options, "estimate": estimate, "models": {}}


FLAGS = {"run": ["--json", "--asymmetric", "--per-tensor", "--fake", "--no-zero-shot", "--no-act-order",
                 "--trust-remote-code"],
         "sweep": ["--json", "--asymmetric", "--per-tensor", "--fake", "--no-zero-shot", "--no-act-order"],
         "estimate": ["--json", "--asymmetric"], "models": ["--json", "--help"]}
SOURCES = {"run": ["--model"], "sweep": ["--model"], "estimate": ["--preset", "--config", "--model"], "models": []}


@st.composite
def argv(draw, places: dict[str, str]) -> list[str]:
    """A command, usually its model, and a few options: each value plausible, or wild one time in five;
    sometimes junk (an unknown option, a stray word) mixed in."""
    command = draw(st.sampled_from(["run", "run", "run", "sweep", "estimate", "estimate", "models"]))
    options = option_values(places)[command]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True)) if options else []
    if SOURCES[command] and draw(st.integers(0, 9)) > 0:  # usually exactly one model source
        source = draw(st.sampled_from(SOURCES[command]))
        chosen = [source] + [c for c in chosen if c not in SOURCES[command]]
    args = [command]
    for name in chosen:
        plausible, wild = options[name]
        args += [name, draw(wild if draw(st.integers(0, 4)) == 0 else plausible)]
    args += draw(st.lists(st.sampled_from(FLAGS[command]), max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0:
        junk = draw(st.sampled_from(["--nope", "stray", "--model", "-x", "--", "-"]))
        args.insert(draw(st.integers(0, len(args))), junk)
    return args


# keeping real runs cheap ---------------------------------------------------------------------------------

def _cheap_eval(config):
    """The same evaluation, over at most two 32-token windows, no generation, no zero-shot."""
    seq_len = min(config.seq_len, 32)
    return dataclasses.replace(config, seq_len=seq_len, max_tokens=max(seq_len, min(config.max_tokens, 64)),
                               gen_tokens=min(config.gen_tokens, 2), zero_shot=False)


@pytest.fixture
def cheap_runs(monkeypatch):
    """Runs that pass validation still load and run for real, on at most 64 tokens and 2 calibration samples."""
    real_run, real_sweep = cli_run.run, cli_sweep.run_sweep

    def run(config, **kwargs):
        calib = dataclasses.replace(config.calib, samples=min(config.calib.samples, 2),
                                    seq_len=min(config.calib.seq_len, 32))
        return real_run(dataclasses.replace(config, eval=_cheap_eval(config.eval), calib=calib), **kwargs)

    def run_sweep(spec, grid, eval_config=None, *args, **kwargs):
        return real_sweep(spec, grid, _cheap_eval(eval_config), *args, **kwargs)

    monkeypatch.setattr(memory, "release_freed_heap", lambda: None)  # a full gc per copy: slow, and only
    # sharpens the RSS figure, which no assertion here reads
    monkeypatch.setattr(cli_run, "run", run)  # the names the commands call
    monkeypatch.setattr(cli_sweep, "run_sweep", run_sweep)
    # sweeps calibrate with the default CalibConfig: make that default small too
    solver_default = CalibConfig.__init__.__defaults__[4:]
    monkeypatch.setattr(CalibConfig.__init__, "__defaults__", ("both", 2, 32, 0, *solver_default))


def assert_one_line_outcome(code: int, out: str, err: str, args: list[str]) -> None:
    """0, or a non-zero code with exactly one stderr line 'error: ...'; no traceback, no internal error."""
    shown = f"argv={args!r}\nstderr={err[-1500:]!r}"
    assert "Traceback" not in err and "Traceback" not in out, shown
    assert "internal error" not in err, shown
    if code == 0:
        return
    assert code == 2, shown
    lines = [line for line in err.splitlines() if not line.startswith(_REMOTE_CODE_PREFIX)]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown


# the fuzzers -----------------------------------------------------------------------------------------------

@pytest.mark.slow
@FUZZ
@given(data=st.data())
@example(data=None)
def test_fuzzed_arguments_give_zero_or_one_error_line(places, cheap_runs, capsys, data):
    args = ["run", "--model", "tiny-llama", "--save", places["text.txt"]] if data is None else data.draw(argv(places))
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    assert_one_line_outcome(code, out, err, args)


@FUZZ
@given(args=st.lists(anything(), max_size=6))
def test_arbitrary_words_give_zero_or_one_error_line(capsys, args):
    """Not even a command: only argparse and the handlers' own checks stand in the way."""
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    assert_one_line_outcome(code, out, err, args)


# every option that takes a path, with names the operating system refuses ------------------------------------

HOSTILE_PATHS = ["a" * 5000, "/" + "a/" * 3000, "x\x00y", "~nouser-memopt/x", "{file}/child", ""]
PATH_OPTIONS = [["run", "--model"], ["sweep", "--model"], ["estimate", "--model"], ["estimate", "--config"],
                ["run", "--model", "tiny-llama", "--eval-text"],
                ["run", "--model", "tiny-llama", "--prune-method", "wanda", "--calib-text"],
                ["run", "--model", "tiny-llama", "--save"], ["sweep", "--model", "tiny-llama", "--db"],
                ["sweep", "--model", "tiny-llama", "--out"]]


@pytest.mark.parametrize("value", HOSTILE_PATHS, ids=["long", "deep", "nul", "unknown-user", "under-a-file", "empty"])
@pytest.mark.parametrize("option", PATH_OPTIONS, ids=lambda o: " ".join(x for x in o if x != "tiny-llama"))
def test_hostile_paths_give_one_error_line(places, cheap_runs, capsys, option, value):
    args = [*option, value.format(file=places["text.txt"])]
    if args[0] == "sweep" and "--db" not in args:
        args += ["--db", places["db"], "--bits", "16"]
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    assert_one_line_outcome(code, out, err, args)


# fixed end-to-end calls, unclamped -------------------------------------------------------------------------

TINY = ["--model", "tiny-llama", "--max-tokens", "64", "--seq-len", "32", "--gen-tokens", "0", "--no-zero-shot"]


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["run", *TINY, "--bits", "4", "--json"],
    ["run", *TINY, "--bits", "3", "--group-size", "32", "--asymmetric", "--zero-point", "float"],
    ["run", *TINY, "--prune-method", "2:4", "--bits", "8"],
    ["run", *TINY, "--prune-method", "wanda", "--prune-ratio", "0.5", "--calib-samples", "2", "--calib-len", "32"],
    ["run", *TINY, "--bits", "1"],
    ["run", *TINY, "--include", "nothing-matches*"],
    ["run", *TINY, "--eval-text", "news", "--bits", "fp16"],
    ["models", "--json"],
    ["estimate", "--preset", "llama-3-8b", "--bits", "4", "--json"],
])
def test_real_calls_end_to_end(args, tmp_path, capsys):
    code = main(args + (["--db", str(tmp_path / "r.db")] if args[0] == "sweep" else []))
    out, err = capsys.readouterr()
    assert_one_line_outcome(code, out, err, args)
    assert (code == 0) == ("1" not in args and "nothing-matches*" not in args)


@pytest.mark.slow
def test_real_sweep_end_to_end(tmp_path, capsys):
    args = ["sweep", *TINY, "--bits", "16,4,2", "--prune-ratios", "0,0.5", "--db", str(tmp_path / "r.db"), "--json"]
    assert main(args) == 0
    assert len(json.loads(capsys.readouterr().out)["rows"]) == 6


@pytest.mark.parametrize("args", [
    ["run", "--model", "tiny-llama", "--bits", "nine"],
    ["sweep", "--model", "\u6a21\u578b/\u00e9", "--device", "cuda:9"],
    ["models", "--bogus"],
    ["run", *TINY, "--bits", "4", "--json"],
])
@pytest.mark.slow
def test_subprocess_calls_print_no_traceback(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMOPT_CACHE": os.environ["MEMOPT_CACHE"], "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "memopt_core", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert_one_line_outcome(done.returncode, done.stdout, done.stderr, args)
    assert (done.returncode == 0) == (args[-1] == "--json")
