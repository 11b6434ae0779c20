"""FP8 weights against torch's own float8 casts."""
from __future__ import annotations

import pytest
import torch

from memopt_core.primitives.formats.fp8 import dequantize_fp8, fp8_levels, quantize_fp8

DTYPES = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}


def gaussian(out=32, inp=96, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", DTYPES)
def test_per_channel_values_are_torch_casts_of_the_scaled_rows(kind):
    dtype, top = DTYPES[kind]
    w = gaussian()
    stored = quantize_fp8(w, kind, per_channel=True)
    scale = w.abs().amax(dim=1, keepdim=True) / top
    assert stored.tensors["values"].dtype == dtype
    assert torch.equal(stored.tensors["scale"], scale)
    reference = (w / scale).to(dtype)
    assert torch.equal(stored.tensors["values"].view(torch.uint8), reference.view(torch.uint8))
    assert torch.equal(dequantize_fp8(stored), reference.float() * scale)
    assert stored.nbytes == 32 * 96 + 4 * 32


@pytest.mark.parametrize("kind", DTYPES)
def test_per_tensor_scale_and_round_trip_of_representable_values(kind):
    dtype, top = DTYPES[kind]
    # Values that are exactly fp8 numbers times a power of two survive unchanged (the scale is exact).
    codes = torch.arange(0, 120, dtype=torch.uint8).view(dtype).float()
    codes = codes[torch.isfinite(codes)]
    w = torch.cat((codes, -codes, torch.tensor([top]))).reshape(1, -1) * 0.125
    stored = quantize_fp8(w, kind, per_channel=False)
    assert stored.tensors["scale"].tolist() == [[0.125]]
    assert torch.equal(dequantize_fp8(stored), w)


def test_e4m3_keeps_more_precision_than_e5m2_and_levels_come_from_every_code():
    w = gaussian(seed=1)
    err = {kind: (dequantize_fp8(quantize_fp8(w, kind)) - w).pow(2).mean().item() for kind in DTYPES}
    assert err["e4m3"] < err["e5m2"]
    levels = fp8_levels(quantize_fp8(w, "e4m3"), row=3)
    assert levels.numel() == 253  # 256 codes: NaN twice (+-), -0 == 0
    assert levels.max().item() == pytest.approx(w[3].abs().max().item())
