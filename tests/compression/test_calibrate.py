"""Calibration data, block-by-block statistics, and calibrated runs end to end on tiny models."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from memopt_core.compression.calibrate import compress_calibrated_
from memopt_core.compression.calibration_data import (PROTECTED_TOKENS, CalibrationSet, LayerStatistics,
                                                      calibration_set, capture_block_inputs, forward_block, gram,
                                                      protected_prefix)
from memopt_core.compression.compress import compress_copy
from memopt_core.compression.layers import QuantLinear, SparseLinear
from memopt_core.compression.walk import effective_weight, find_blocks, target_linears
from memopt_core.config import (CalibConfig, EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig, SolverConfig,
                                TargetConfig)
from memopt_core.errors import ConfigError, DataError
from memopt_core.loading.models import weights_checksum
from memopt_core.primitives.gptq import gptq_quantize
from memopt_core.primitives.wanda import wanda_mask
from memopt_core.texts import load_text, token_windows

SPEC = ModelSpec("tiny-llama")


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from memopt_core.loading.bundled import smollm2_tokenizer_folder

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_folder())


def _tokens(vocab: int = 256, n: int = 6, length: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _positions(ids: torch.Tensor, window: torch.Tensor) -> list[int]:
    """Where ``window`` occurs in ``ids``."""
    hits = (ids.unfold(0, window.numel(), 1) == window).all(dim=1)
    return torch.nonzero(hits).flatten().tolist()


@pytest.mark.slow
def test_calibration_windows_avoid_the_evaluated_tokens(tokenizer):
    calib = CalibConfig(samples=6, seq_len=64, seed=3)
    data = calibration_set(tokenizer, calib, EvalConfig(max_tokens=4096))
    assert data.tokens.shape == (6, 64) and data.tokens.dtype == torch.long
    names = [t["name"] for t in data.description["texts"]]
    assert names == ["wikipedia", "news"] and [t["samples"] for t in data.description["texts"]] == [3, 3]
    assert {k: data.description[k] for k in ("samples", "seq_len", "seed")} == {"samples": 6, "seq_len": 64, "seed": 3}
    for index, name in enumerate(names):
        ids = token_windows(tokenizer, load_text(name).text, 64, 90_000).reshape(-1)  # beyond the pool
        for window in data.tokens[3 * index:3 * index + 3]:
            found = _positions(ids, window)
            assert found and min(found) >= PROTECTED_TOKENS  # first occurrence beyond the protected prefix
    again = calibration_set(tokenizer, calib, EvalConfig(max_tokens=4096))
    assert torch.equal(again.tokens, data.tokens)
    assert not torch.equal(calibration_set(tokenizer, CalibConfig(samples=6, seq_len=64, seed=4)).tokens, data.tokens)


def test_a_user_file_skips_its_evaluated_prefix_only_when_it_is_evaluated(tmp_path, tokenizer):
    path = tmp_path / "text.txt"
    path.write_text(" ".join(f"word{i}" for i in range(3000)), encoding="utf-8")
    evaluated = EvalConfig(text=str(path), max_tokens=512, seq_len=64)
    assert protected_prefix(str(path), evaluated) == 512 + 64
    assert protected_prefix(str(path), EvalConfig()) == 0
    assert protected_prefix("news", EvalConfig(max_tokens=40_000)) == 40_000 + 64
    data = calibration_set(tokenizer, CalibConfig(text=str(path), samples=4, seq_len=32), evaluated)
    ids = token_windows(tokenizer, path.read_text(), 32, 100_000).reshape(-1)
    assert all(min(_positions(ids, w)) >= 576 for w in data.tokens)
    with pytest.raises(DataError, match="kept for evaluation"):
        calibration_set(tokenizer, CalibConfig(text=str(path), samples=1, seq_len=32),
                        EvalConfig(text=str(path), max_tokens=20_000, seq_len=64))


def test_captured_inputs_replay_the_model(tiny_llama):
    tokens = _tokens()
    _, blocks = find_blocks(tiny_llama)
    inputs = capture_block_inputs(tiny_llama, blocks[0], tokens)
    assert inputs.hidden.shape == (6, 32, 64) and "position_embeddings" in inputs.kwargs
    with torch.no_grad():
        expected = tiny_llama(tokens, output_hidden_states=True).hidden_states  # embeddings, block 0, block 1...
        outputs = forward_block(blocks[0], inputs)
    assert torch.allclose(inputs.hidden, expected[0])
    assert torch.allclose(outputs.hidden, expected[1], atol=1e-5)


@pytest.mark.parametrize("width", [8, 300, 1000])
def test_gram_is_the_plain_product(width):
    rows = torch.randn(64, width)
    assert torch.allclose(gram(rows), rows.T @ rows, rtol=1e-5, atol=1e-4)


def test_statistics_of_an_input():
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    rows = x.reshape(15, 8)
    stats = LayerStatistics.of(x.float(), hessian=True)
    assert stats.tokens == 15 and stats.hessian.dtype == torch.float32
    assert torch.allclose(stats.hessian.double(), 2 / 15 * rows.T @ rows, rtol=1e-5, atol=1e-6)
    assert torch.allclose(LayerStatistics.of(x, hessian=False).sq_norms.double(), (rows ** 2).sum(0), rtol=1e-5)


def _layer_inputs(model: nn.Module, names: list[str], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named layer's input when ``model`` runs ``tokens`` as one batch."""
    seen = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, a[0]))
             for n in names]
    with torch.no_grad():
        model(tokens)
    for hook in hooks:
        hook.remove()
    return seen


def test_every_layer_is_gptq_of_its_input_in_the_compressed_model(tiny_llama):
    """True sequential: each layer calibrates on what the layers before it, already compressed,
    feed it, i.e. on its input in the finished compressed model."""
    tokens = _tokens()
    quant = QuantConfig(method="gptq", bits=3, granularity="group", group_size=32)
    compressed = compress_copy(tiny_llama, RunConfig(model=SPEC, quant=quant), calibration=CalibrationSet(tokens, {}))
    inputs = _layer_inputs(compressed.model, compressed.target_names, tokens)
    for name in compressed.target_names:
        hessian = LayerStatistics.of(inputs[name], hessian=True).hessian
        expected = gptq_quantize(tiny_llama.get_submodule(name).weight, hessian, quant, SolverConfig())
        layer = compressed.model.get_submodule(name)
        assert torch.equal(layer.codes(), expected.codes) and torch.equal(layer.scale, expected.scale), name


def test_wanda_through_the_walker_uses_block_inputs(tiny_llama):
    tokens = _tokens()
    config = RunConfig(model=SPEC, prune=PruneConfig("wanda", 0.5))
    names = list(target_linears(tiny_llama))
    captured = {}
    handle = tiny_llama.get_submodule(names[0]).register_forward_pre_hook(
        lambda m, a: captured.setdefault("x", []).append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        tiny_llama(tokens)
    handle.remove()
    compressed = compress_copy(tiny_llama, config, calibration=CalibrationSet(tokens, {}))
    x = torch.cat(captured["x"])
    expected = wanda_mask(tiny_llama.get_submodule(names[0]).weight, (x ** 2).sum(0), 0.5)
    assert torch.equal(effective_weight(compressed.model.get_submodule(names[0])) != 0, expected)


@pytest.mark.parametrize("prune,quant", [
    (None, QuantConfig(method="gptq", bits=4)),
    (None, QuantConfig(method="gptq", bits=3, granularity="group", group_size=32, symmetric=False)),
    (PruneConfig("sparsegpt", 0.5), None),
    (PruneConfig("sparsegpt", pattern="2:4"), QuantConfig(method="gptq", bits=4)),
    (PruneConfig("wanda", pattern="4:8"), QuantConfig(method="rtn", bits=8)),
    (PruneConfig("magnitude", 0.5), QuantConfig(method="gptq", bits=4, symmetric=False, zero_point="float")),
])
def test_calibrated_copies_are_packed_and_leave_the_original_alone(tiny_llama, prune, quant):
    tokens = _tokens(n=4)
    before = weights_checksum(tiny_llama)
    config = RunConfig(model=SPEC, prune=prune, quant=quant)
    compressed = compress_copy(tiny_llama, config, calibration=lambda: CalibrationSet(tokens, {"texts": "t"}))
    assert weights_checksum(tiny_llama) == before
    kind = QuantLinear if quant is not None else SparseLinear
    assert all(isinstance(compressed.model.get_submodule(n), kind) for n in compressed.target_names)
    assert compressed.calibration["texts"] == "t" and compressed.calibration["solver"]["act_order"] is True
    assert compressed.timings["calibrate_s"] > 0
    if prune is not None:
        weights = [effective_weight(compressed.model.get_submodule(n)) for n in compressed.target_names]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros >= 0.5


def test_gptq_copy_tracks_the_original_better_than_rtn(tiny_llama):
    tokens = _tokens(n=8, length=64)
    calibration = CalibrationSet(tokens, {})
    held_out = _tokens(n=4, length=64, seed=9)
    errors = {}
    for method in ("rtn", "gptq"):
        config = RunConfig(model=SPEC, quant=QuantConfig(method=method, bits=3))
        model = compress_copy(tiny_llama, config, calibration=calibration).model
        with torch.no_grad():
            errors[method] = (model(held_out).logits - tiny_llama(held_out).logits).pow(2).mean().item()
    assert errors["gptq"] < errors["rtn"]


def test_encoders_calibrate_too(tiny_bert):
    tokens = _tokens(n=4)
    before = weights_checksum(tiny_bert)
    config = RunConfig(model=ModelSpec("tiny-bert"), prune=PruneConfig("sparsegpt", 0.5),
                       quant=QuantConfig(method="gptq", bits=4))
    compressed = compress_copy(tiny_bert, config, calibration=CalibrationSet(tokens, {}))
    assert all(isinstance(compressed.model.get_submodule(n), QuantLinear) for n in compressed.target_names)
    assert weights_checksum(tiny_bert) == before


def test_requests_that_cannot_calibrate_fail_clearly(tiny_llama):
    config = RunConfig(model=SPEC, quant=QuantConfig(method="gptq", bits=4))
    with pytest.raises(ConfigError, match="calibration data"):
        compress_copy(tiny_llama, config)
    outside = RunConfig(model=SPEC, quant=QuantConfig(method="gptq", bits=4), targets=TargetConfig(include=("lm_head",)))
    with pytest.raises(ConfigError, match="inside the transformer blocks"):
        compress_copy(tiny_llama, outside, calibration=CalibrationSet(_tokens(), {}))
    with pytest.raises(ConfigError, match="positions"):
        compress_calibrated_(tiny_llama, list(target_linears(tiny_llama)), None, config.quant, _tokens(length=300))


@pytest.mark.slow
def test_runner_records_calibration_and_cli_accepts_the_flags(capsys):
    from memopt_core.cli import main

    code = main(["run", "--model", "tiny-llama", "--bits", "4", "--quant-method", "gptq", "--no-act-order",
                 "--prune-method", "wanda", "--prune-pattern", "2:4", "--calib-samples", "2", "--calib-len", "32",
                 "--calib-text", "news", "--max-tokens", "128", "--seq-len", "64", "--gen-tokens", "0",
                 "--no-zero-shot", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    calibration = result["protocol"]["calibration"]
    assert calibration["samples"] == 2 and calibration["seq_len"] == 32 and calibration["text"] == "news"
    assert calibration["solver"]["act_order"] is False
    assert result["config"]["quant"]["method"] == "gptq" and result["config"]["prune"]["method"] == "wanda"
    assert result["memory"]["bits_per_weight"] < 5 and abs(result["sparsity"] - 0.5) < 0.01
