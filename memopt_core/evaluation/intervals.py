"""95% intervals of a running mean of per-token values (pure functions on tensors).

An estimate after ``k`` of ``N`` windows is the mean of the values scored so far; its target is
the exact figure, the mean over all ``N`` windows. Four ways to put a band around it:

- ``token``: every token an independent draw, the normal quantile times the standard error of the
  token mean (what llama.cpp's perplexity tool prints). Tokens of one window are correlated and
  texts change difficulty from window to window, so this band is the narrowest and can be too
  narrow;
- ``block``: the means of blocks of ``seq_len / 8`` consecutive tokens as the draws (batch means),
  Student's t with (blocks - 1) degrees of freedom;
- ``window``: the window means as the draws, Student's t with (windows - 1) degrees of freedom;
  no band after the first window (one draw says nothing about the spread);
- ``bootstrap``: resampling the scored windows with replacement (1,000 draws, fixed seed), the
  2.5% and 97.5% percentiles of the resampled means; zero width after one window.

``token``, ``block`` and ``window`` shrink by the finite-population factor ``sqrt(1 - n / N)``:
the target is the mean over the evaluated tokens, so the band closes on the exact figure when the
last window is scored. ``bench/bench_intervals.py`` measures how often each band covers the exact
figure; :data:`DEFAULT_INTERVAL` is the method it found honest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.special import stdtrit
from torch import Tensor

from memopt_core.errors import ConfigError, choices
from memopt_core.evaluation.stats import Z95

INTERVAL_METHODS = ("window", "block", "token", "bootstrap")
DEFAULT_INTERVAL = "window"
BLOCKS_PER_WINDOW = 8
BOOTSTRAP_DRAWS = 1000
INTERVAL_MEANING = {
    "window": "95% interval from the spread of the window means so far (Student's t over windows, "
              "shrinking to zero width when every window is scored); none after the first window",
    "block": f"95% interval from the spread of blocks of 1/{BLOCKS_PER_WINDOW} window (Student's t over blocks)",
    "token": "95% interval from the spread of single tokens (normal; treats tokens as independent)",
    "bootstrap": "95% interval from resampling the scored windows (percentile bootstrap)",
}


def check_method(method: str) -> str:
    if method not in INTERVAL_METHODS:
        raise ConfigError(f"interval method {method!r} is not supported; choose {choices(INTERVAL_METHODS)}")
    return method


@dataclass(frozen=True)
class MeanInterval:
    """A running mean and its 95% interval; ``low``/``high`` are -inf/inf when no band exists yet."""

    mean: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def map(self, fn) -> "MeanInterval":
        """The interval of a monotone increasing function of the mean (exp for perplexity)."""
        return MeanInterval(fn(self.mean), _safe(fn, self.low), _safe(fn, self.high))

    def clamp(self, low: float, high: float) -> "MeanInterval":
        return MeanInterval(self.mean, max(low, self.low), min(high, self.high))

    def pair(self) -> list[float] | None:
        """``[low, high]`` for JSON; None when no band exists yet."""
        return [self.low, self.high] if math.isfinite(self.low) and math.isfinite(self.high) else None


def _safe(fn, value: float) -> float:
    """``fn(value)``, infinite where it overflows (exp of a huge NLL)."""
    try:
        return fn(value)
    except OverflowError:
        return math.inf


def _t_band(unit_means: Tensor, population_units: int) -> float:
    """Half-width of Student's t interval of the mean of ``unit_means`` [U], finite-population corrected."""
    units = unit_means.numel()
    if units < 2:
        return math.inf
    spread = unit_means.std(correction=1).item() / math.sqrt(units)
    fpc = math.sqrt(max(0.0, 1.0 - units / population_units))
    return float(stdtrit(units - 1, 0.975)) * spread * fpc


def _unit_means(values: Tensor, unit: int) -> Tensor:
    """Means of consecutive units of ``unit`` values: [n] -> [n // unit] (a partial unit is dropped)."""
    whole = values.numel() // unit
    return values[:whole * unit].view(whole, unit).mean(1)


def _bootstrap(unit_means: Tensor) -> tuple[float, float]:
    units = unit_means.numel()
    generator = torch.Generator().manual_seed(0)
    draws = torch.randint(0, units, (BOOTSTRAP_DRAWS, units), generator=generator)
    means = unit_means[draws].mean(1)
    return torch.quantile(means, 0.025).item(), torch.quantile(means, 0.975).item()


def mean_interval(values: Tensor, window: int, total_windows: int, method: str = DEFAULT_INTERVAL) -> MeanInterval:
    """Mean of ``values`` [k * window] (per-token values of the first k windows, float64) and its 95%
    interval by ``method``; ``total_windows`` N (>= k) sets the finite-population factor."""
    check_method(method)
    n = values.numel()
    mean = values.mean().item()
    if method == "token":
        if n < 2:
            return MeanInterval(mean, -math.inf, math.inf)
        fpc = math.sqrt(max(0.0, 1.0 - n / (total_windows * window)))
        half = Z95 * values.std(correction=1).item() / math.sqrt(n) * fpc
        return MeanInterval(mean, mean - half, mean + half)
    if method == "block":
        block = max(1, window // BLOCKS_PER_WINDOW)
        half = _t_band(_unit_means(values, block), total_windows * (window // block))
        return MeanInterval(mean, mean - half, mean + half)
    unit_means = _unit_means(values, window)
    if method == "bootstrap":
        return MeanInterval(mean, *_bootstrap(unit_means))
    half = _t_band(unit_means, total_windows)
    return MeanInterval(mean, mean - half, mean + half)
