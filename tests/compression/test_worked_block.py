"""Worked blocks: the values, codes and scales of a real first block, checked by hand."""
from __future__ import annotations

import pytest
import torch

from memopt_core.compression.worked_block import worked_block
from memopt_core.config import QuantConfig
from memopt_core.primitives.formats.nf4 import nf4_table


def test_integer_block_by_hand():
    w = torch.tensor([[1.75, -0.5, 0.3, 0.0], [-3.5, 1.0, 0.6, -0.1]])
    block = worked_block(w, QuantConfig(bits=4))
    assert block.codes == [15, 6, 9, 8] and block.decoded == [1.75, -0.5, 0.25, 0.0]
    assert block.scales == ["scale s = 0.25 (fp16)"] and block.max_abs_error == pytest.approx(0.05)
    assert len(block.levels) == 16


def test_nf4_block_codes_decode_through_the_table():
    w = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    block = worked_block(w, QuantConfig(format="nf4"))
    absmax = w.reshape(-1)[:64].abs().max().item()
    assert len(block.values) == 64 and block.where == "row 0, columns 0-63"
    assert block.decoded == pytest.approx([nf4_table()[c].item() * absmax for c in block.codes])
    assert f"{absmax:.6g}" in block.scales[0]


@pytest.mark.parametrize("fmt, size, scale_word", [("mxfp4", 32, "E8M0"), ("nvfp4", 16, "FP8 E4M3"),
                                                   ("q4_k", 32, "superblock d"), ("q6_k", 16, "superblock d"),
                                                   ("fp8-e5m2", 16, "57344")])
def test_each_format_names_its_scales(fmt, size, scale_word):
    w = torch.randn(8, 512, generator=torch.Generator().manual_seed(1))
    block = worked_block(w, QuantConfig(format=fmt))
    assert len(block.values) == len(block.codes) == len(block.decoded) == size
    assert any(scale_word in line for line in block.scales)
    assert set(round(v, 6) for v in block.decoded) <= set(round(v, 6) for v in block.levels)


def test_kquant_fallback_is_named():
    block = worked_block(torch.randn(4, 576), QuantConfig(format="q4_k"))
    assert "Q5_0" in block.scales[0] and len(block.values) == 32
