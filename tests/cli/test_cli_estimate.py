"""`estimate` subcommand: argument handling, JSON and table output, refusals as MemoptError."""
from __future__ import annotations

import argparse
import json

import pytest

from memopt_core.cli.estimate import parse_group_size, register, run_estimate
from memopt_core.errors import ConfigError, DataError, MemoptError, ModelLoadError

GiB = 2**30
TINY = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2, "tie_word_embeddings": True}
TINY_PARAMS = 1000 * 64 + 3 * (64 * 64 * 2 + 2 * 64 * 16 + 3 * 64 * 160 + 2 * 64) + 64   # 187,328


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub)
    return parser.parse_args(["estimate", *argv])


def run_json(capsys, *argv: str) -> dict:
    assert run_estimate(parse(*argv, "--json")) == 0
    return json.loads(capsys.readouterr().out)


def test_preset_json_llama3_8b_at_32k(capsys):
    data = run_json(capsys, "--preset", "llama-3-8b", "--bits", "4", "--group-size", "128", "--context", "32768")
    assert data["params"] == 8_030_261_248
    assert data["kv_cache_bytes"] == 2 * 32 * 8 * 128 * 32768 * 2 == 4 * GiB
    assert data["bits_per_weight"] == 4.125
    assert data["total_bytes"] == data["weights_bytes"] + data["kv_cache_bytes"] + data["activation_bytes"]
    assert data["source"] == "llama-3-8b" and len(data["fits_on"]) == 6


def test_flags_reach_the_plan(capsys):
    data = run_json(capsys, "--preset", "smollm2-135m", "--bits", "4", "--group-size", "per-channel", "--asymmetric",
                    "--sparsity", "0.5", "--sparsity-format", "bitmask", "--batch", "2", "--context", "64",
                    "--kv-bits", "8")
    # per row: fp16 scale + fp16 zero; rows per layer 576+192+192+576+1536+1536+576 = 5,184 over 3,538,944 weights
    assert data["bits_per_weight"] == 1 + 0.5 * 4 + 5184 * 32 / 3_538_944
    assert data["kv_cache_bytes"] == 2 * 2 * 64 * 30 * 3 * 64 * 1   # K,V x batch x T x layers x KV heads x 64 x 1 B
    assert data["plan"]["label"] == "W4A16 per-channel asym + 50% sparse (bitmask)"


def test_defaults_are_the_uncompressed_baseline(capsys):
    data = run_json(capsys, "--preset", "gpt2")
    assert data["bits_per_weight"] == 16 and data["weights_bytes"] == 124_439_808 * 2
    assert data["plan"]["context"] == 2048 and data["plan"]["kv_bits"] == 16


def test_config_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    assert run_json(capsys, "--config", str(path))["params"] == TINY_PARAMS


def test_model_bundled_key_and_local_folder_read_the_config_only(tmp_path, capsys):
    assert run_json(capsys, "--model", "smollm2-135m")["params"] == 134_515_008
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    (tmp_path / "model.safetensors").write_bytes(b"not weights at all")  # reading it would fail
    assert run_json(capsys, "--model", str(tmp_path))["params"] == TINY_PARAMS


def test_human_table(capsys):
    assert run_estimate(parse("--preset", "llama-3-70b", "--bits", "4")) == 0
    out = capsys.readouterr().out
    assert "GiB" in out and "fits on" in out and "80 GiB GPU" in out and "this machine (free RAM)" in out
    assert "4.125 bits per targeted weight" in out
    assert "70,553,706,496" in out


@pytest.mark.parametrize("argv, error, fragment", [
    (("--preset", "llama-9"), ConfigError, "'llama-9'"),
    (("--preset", "gpt2", "--bits", "7"), ConfigError, "bits 7"),
    (("--preset", "gpt2", "--group-size", "wide"), ConfigError, "'wide'"),
    (("--preset", "gpt2", "--sparsity", "0.99"), ConfigError, "0.99"),
    (("--preset", "gpt2", "--kv-bits", "2"), ConfigError, "KV-cache bits 2"),
    (("--model", "tiny-llama"), ModelLoadError, "'tiny-llama'"),
    (("--model", "org/not-here"), ModelLoadError, "--config"),
    (("--config", "/no/such/config.json"), DataError, "does not exist"),
])
def test_errors_are_one_line_memopt_errors(argv, error, fragment):
    with pytest.raises(error) as info:
        run_estimate(parse(*argv))
    assert isinstance(info.value, MemoptError)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_source_is_required():
    with pytest.raises(SystemExit):
        parse("--bits", "4")
    with pytest.raises(SystemExit):
        parse("--preset", "gpt2", "--config", "x.json")


def test_group_size_spellings():
    assert parse_group_size("128") == 128 and parse_group_size("g64") == 64
    assert parse_group_size("per-channel") is None and parse_group_size("0") is None


def test_handler_is_registered():
    assert parse("--preset", "gpt2").handler is run_estimate
