"""Running-mean intervals against scipy.stats and hand computations."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from memopt_core.errors import ConfigError
from memopt_core.evaluation.intervals import BLOCKS_PER_WINDOW, mean_interval

WINDOW = 16


@pytest.fixture(scope="module")
def values():
    """Per-token values of 6 windows whose means differ (a text that changes difficulty)."""
    generator = torch.Generator().manual_seed(0)
    level = torch.tensor([1.0, 3.0, 2.0, 4.0, 2.5, 1.5]).repeat_interleave(WINDOW)
    return (level + torch.randn(6 * WINDOW, generator=generator, dtype=torch.float64)).double()


def test_window_interval_is_students_t_over_window_means_with_finite_population_factor(values):
    k, total = 4, 10
    head = values[:k * WINDOW]
    means = head.numpy().reshape(k, WINDOW).mean(1)
    low, high = stats.t.interval(0.95, df=k - 1, loc=means.mean(), scale=stats.sem(means))
    shrink = math.sqrt(1 - k / total)
    band = mean_interval(head, WINDOW, total, "window")
    assert band.mean == pytest.approx(head.mean().item())
    assert band.low == pytest.approx(means.mean() - (means.mean() - low) * shrink)
    assert band.high == pytest.approx(means.mean() + (high - means.mean()) * shrink)


def test_token_interval_is_normal_over_tokens(values):
    head = values[:3 * WINDOW].numpy()
    half = stats.norm.ppf(0.975) * stats.sem(head) * math.sqrt(1 - head.size / (6 * WINDOW))
    band = mean_interval(values[:3 * WINDOW], WINDOW, 6, "token")
    assert (band.low, band.high) == pytest.approx((head.mean() - half, head.mean() + half))


def test_block_interval_is_t_over_blocks(values):
    block = WINDOW // BLOCKS_PER_WINDOW
    head = values[:2 * WINDOW].numpy()
    means = head.reshape(-1, block).mean(1)
    half = stats.t.ppf(0.975, means.size - 1) * stats.sem(means) * math.sqrt(1 - means.size / (6 * BLOCKS_PER_WINDOW))
    band = mean_interval(values[:2 * WINDOW], WINDOW, 6, "block")
    assert (band.low, band.high) == pytest.approx((head.mean() - half, head.mean() + half))


def test_one_window_has_no_window_band_and_all_windows_have_zero_width(values):
    first = mean_interval(values[:WINDOW], WINDOW, 6, "window")
    assert math.isinf(first.low) and math.isinf(first.high) and first.pair() is None
    every = mean_interval(values, WINDOW, 6, "window")
    assert every.low == every.high == pytest.approx(values.mean().item())
    assert every.pair() == [every.low, every.high]


def test_bootstrap_interval_lies_between_the_window_means(values):
    head = values[:5 * WINDOW]
    means = head.numpy().reshape(5, WINDOW).mean(1)
    band = mean_interval(head, WINDOW, 6, "bootstrap")
    assert means.min() <= band.low < head.mean().item() < band.high <= means.max()
    assert mean_interval(head, WINDOW, 6, "bootstrap") == band  # a fixed seed: reproducible
    single = mean_interval(values[:WINDOW], WINDOW, 6, "bootstrap")
    assert single.low == pytest.approx(single.high)  # one window: resampling cannot show any spread


def test_map_and_clamp_transform_the_band():
    band = mean_interval(torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64), 2, 4, "token")
    assert band.map(math.exp).mean == pytest.approx(math.exp(1.5))
    assert band.clamp(1.0, 2.0).low >= 1.0
    with pytest.raises(ConfigError, match="interval method"):
        mean_interval(torch.zeros(4, dtype=torch.float64), 2, 2, "jackknife")

