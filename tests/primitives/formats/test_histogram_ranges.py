"""Clipping ranges from the pooled histogram: percentile against numpy, KL on hand-built histograms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from memopt_core.primitives.formats.ranges import entropy_ratio, percentile_ratio, pooled_magnitudes


def test_pooled_magnitudes_are_normalised_by_their_group_and_skip_padding_and_zero_groups():
    groups = torch.tensor([[[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]], [[-4.0, 1.0, 9.0], [3.0, 3.0, 3.0]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert sorted(pooled_magnitudes(groups, valid).tolist()) == pytest.approx(
        sorted([1.0, 0.5, 0.25, 4 / 9, 1 / 9, 1.0, 1.0, 1.0]))


def test_percentile_equals_numpy():
    magnitudes = torch.rand(100_000, generator=torch.Generator().manual_seed(0)) ** 3
    assert percentile_ratio(magnitudes) == pytest.approx(np.percentile(magnitudes.numpy(), 99.9), rel=1e-6)
    assert percentile_ratio(magnitudes, 50.0) == pytest.approx(np.percentile(magnitudes.numpy(), 50.0), rel=1e-6)


def test_entropy_clips_a_lone_outlier_and_keeps_a_full_uniform_range():
    generator = torch.Generator().manual_seed(1)
    body = torch.rand(200_000, generator=generator) * 0.5
    with_outlier = torch.cat((body, torch.ones(1)))
    ratio = entropy_ratio(with_outlier, bits=4)
    assert 0.45 <= ratio <= 0.6  # the threshold lands at the body's edge, not at the outlier
    assert entropy_ratio(torch.rand(200_000, generator=generator), bits=4) > 0.95


def test_entropy_clips_a_gaussian_tail_harder_at_fewer_bits():
    magnitudes = torch.randn(500_000, generator=torch.Generator().manual_seed(2)).abs()
    magnitudes = magnitudes / magnitudes.max()
    assert entropy_ratio(magnitudes, bits=3) < entropy_ratio(magnitudes, bits=8) <= 1.0
