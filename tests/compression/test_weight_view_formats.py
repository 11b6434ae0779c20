"""The weight view's data for formats: the grid of the block the format quantizes, the rotated
weights and absmax/RMS when rotating, the clip of histogram ranges."""
from __future__ import annotations

import pytest
import torch

from memopt_core.compression.weight_view import LayerWeights, _add_grid, grid_levels
from memopt_core.config import QuantConfig
from memopt_core.primitives.formats.hadamard import absmax_to_rms, random_signs, rotate_weight
from memopt_core.primitives.formats.nf4 import nf4_table
from memopt_core.primitives.quant import weight_clip_ratio


def weight(seed=0):
    return torch.randn(16, 256, generator=torch.Generator().manual_seed(seed))


def empty_view(w):
    return LayerWeights("layer", [], [], [], w.numel(), 0)


def test_nf4_grid_is_the_table_times_the_first_blocks_absmax():
    w = weight()
    assert grid_levels(w, QuantConfig(format="nf4")) == pytest.approx(
        (nf4_table() * w.reshape(-1)[:64].abs().max()).tolist())


def test_rotation_adds_the_rotated_sample_and_the_rows_absmax_to_rms():
    w = weight(1)
    w[:, 3] = 20.0  # an outlier column: rotation spreads it
    view = empty_view(w)
    index = torch.arange(10)
    _add_grid(view, w, QuantConfig(bits=4, rotate="hadamard"), index)
    rotated = rotate_weight(w, random_signs(256))
    assert view.rotated == pytest.approx(rotated.flatten()[:10].tolist())
    assert view.absmax_to_rms == pytest.approx((absmax_to_rms(w).mean().item(), absmax_to_rms(rotated).mean().item()))
    assert view.absmax_to_rms[1] < view.absmax_to_rms[0]
    assert max(view.grid) == pytest.approx(rotated[0].abs().max().item(), rel=1e-3)  # the grid of W Q, not of W


def test_histogram_ranges_report_the_clipped_range_of_the_first_group():
    w = weight(2)
    cfg = QuantConfig(bits=4, granularity="per-tensor", range_method="entropy")
    view = empty_view(w)
    _add_grid(view, w, cfg, torch.arange(4))
    ratio = weight_clip_ratio(w, cfg)
    assert ratio < 1.0 and view.clip == pytest.approx([-ratio * w.abs().max().item(), ratio * w.abs().max().item()])
    assert max(view.grid) <= view.clip[1] * (1 + 1e-3)  # the grid ends at the clip
