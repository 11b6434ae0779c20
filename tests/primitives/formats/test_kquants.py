"""k-quant superblocks: llama.cpp's byte layout read back by gguf.quants, its block sizes, its fallbacks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from memopt_core.primitives.formats.ggml_blocks import quantize_legacy
from memopt_core.primitives.formats.ggml_layout import ggml_bytes
from memopt_core.primitives.formats.kquants import KQUANTS, dequantize_kquant, kquant_levels, quantize_kquant
from memopt_core.primitives.formats.stored import StoredWeight

BITS_PER_WEIGHT = {"q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5, "q6_k": 6.5625}


def weight(out, inp, seed=0, scale=0.02):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * scale


def gguf_type(name):
    return GGMLQuantizationType[name]


@pytest.mark.parametrize("kind", list(KQUANTS))
def test_superblock_bytes_match_llama_cpp(kind):
    stored = quantize_kquant(weight(8, 512), kind)
    name, data = ggml_bytes(stored)
    block, type_size = GGML_QUANT_SIZES[gguf_type(name)]
    assert (block, type_size) == (256, KQUANTS[kind].type_size)
    assert data.shape == (8, 2 * type_size) and stored.nbytes == data.size  # what memopt holds = llama.cpp's bytes
    assert stored.bits_per_weight == BITS_PER_WEIGHT[kind]
    if kind == "q4_k":
        assert type_size == 144


@pytest.mark.parametrize("kind", list(KQUANTS))
def test_gguf_decodes_memopts_bytes_to_memopts_values(kind):
    w = weight(16, 768, seed=1)
    w[2, 100] = 0.5  # an outlier, so sub-block scales differ widely within a superblock
    stored = quantize_kquant(w, kind)
    name, data = ggml_bytes(stored)
    decoded = quants.dequantize(data, gguf_type(name))
    assert np.array_equal(decoded, dequantize_kquant(stored).numpy())


def test_error_falls_as_bits_rise():
    w = weight(64, 512, seed=2)
    errors = [(dequantize_kquant(quantize_kquant(w, kind)) - w).pow(2).mean().item()
              for kind in ("q2_k", "q3_k", "q4_k", "q6_k")]
    assert errors == sorted(errors, reverse=True)
    assert errors[2] < 0.01 * w.pow(2).mean().item()  # Q4_K: under 1% relative error on Gaussian weights


@pytest.mark.parametrize("kind, layout", [("q2_k", "iq4_nl"), ("q3_k", "iq4_nl"), ("q4_k", "q5_0"), ("q6_k", "q8_0")])
def test_rows_not_a_multiple_of_256_fall_back_as_llama_cpp_does(kind, layout):
    w = weight(8, 576, seed=3)  # SmolLM2's hidden width: 576 = 2.25 superblocks
    stored = quantize_kquant(w, kind)
    assert stored.meta == {"layout": layout, "fallback": True}
    name, data = ggml_bytes(stored)
    assert np.array_equal(quants.dequantize(data, gguf_type(name)), dequantize_kquant(stored).numpy())
    narrow = quantize_kquant(weight(8, 100), kind)  # not even a multiple of 32: F16
    assert narrow.meta["layout"] == "f16" and narrow.bits_per_weight == 16


@pytest.mark.parametrize("layout", ["q5_0", "q8_0"])
def test_fallback_blocks_equal_ggml_reference_quantization_byte_for_byte(layout):
    w = weight(16, 96, seed=4)
    stored = StoredWeight("fallback", (16, 96), quantize_legacy(w, layout), {"layout": layout})
    name, data = ggml_bytes(stored)
    assert np.array_equal(data, quants.quantize(w.numpy(), gguf_type(name)))


def test_levels_of_a_sub_block_contain_its_decoded_values():
    w = weight(4, 256, seed=5)
    stored = quantize_kquant(w, "q4_k")
    levels = kquant_levels(stored, 3)  # sub-block 3: columns 96..127 of row 0
    decoded = dequantize_kquant(stored)[0, 96:128]
    assert levels.numel() <= 16 and torch.isin(decoded, levels).all()
