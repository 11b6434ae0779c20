"""Dequantizing once for generation: the same tokens, each weight built once, nothing left behind,
and no cache where free memory is short."""
from __future__ import annotations

import threading

import torch

from memopt_core.compression.compress import compress_copy
from memopt_core.compression.dequantize_once import dequantized_once
from memopt_core.compression.layers import QuantLinear
from memopt_core.config import ModelSpec, QuantConfig, RunConfig
from memopt_core.evaluation.causal_lm import greedy_generate
from tiny_models import make_tiny_llama


class ByteTokenizer:
    """Just enough of a tokenizer for generate: bytes + 3 as ids, 0 as padding."""
    pad_token_id, eos_token_id = 0, None

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = torch.tensor([[b + 3 for b in text.encode()]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids)


def quantized_llama():
    return compress_copy(make_tiny_llama(), RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(bits=4))).model


def test_generation_is_identical_and_each_weight_is_built_once():
    model = quantized_llama()
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    builds: list[int] = []
    plain = greedy_generate(model, ByteTokenizer(), "memory", 6)
    original_build = QuantLinear.dequantized_weight
    QuantLinear.dequantized_weight = lambda self, dtype=None: builds.append(1) or original_build(self, dtype)
    try:
        with dequantized_once(model, free_bytes=2**40) as kept:
            again = greedy_generate(model, ByteTokenizer(), "memory", 6)
    finally:
        QuantLinear.dequantized_weight = original_build
    assert kept and again == plain and len(plain.split()) == 6
    assert len(builds) == len(layers)  # once per layer, not once per layer per token (6x)
    assert all("dequantized_weight" not in vars(layer) for layer in layers)  # nothing left behind


def test_no_cache_when_free_memory_is_short():
    model = quantized_llama()
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    dense = sum(4 * layer.in_features * layer.out_features for layer in layers)  # float32, every layer
    with dequantized_once(model, free_bytes=2 * dense - 1) as kept:  # the kept weights may take half
        assert not kept and layers[0].dequantized_weight() is not layers[0].dequantized_weight()
    with dequantized_once(model, free_bytes=2 * dense) as kept:
        assert kept and layers[0].dequantized_weight() is layers[0].dequantized_weight()


def test_a_set_cancel_stops_generation_after_one_token():
    model = quantized_llama()
    cancel = threading.Event()
    cancel.set()
    assert greedy_generate(model, ByteTokenizer(), "memory", 6, cancel=cancel) == \
        greedy_generate(model, ByteTokenizer(), "memory", 1)
