"""Small pure statistics helpers: accuracy with a Wilson interval, and KL divergences between
next-token distributions (exact, or over the reference's top-k tokens plus one rest bucket)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``correct / n``.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0/n or n/n,
    which matters for the ~100-sentence test sets used here. ``n == 0`` gives (0, 1).
    """
    if not 0 <= correct <= n:
        raise ValueError(f"correct {correct} must lie between 0 and n {n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class AccuracyResult:
    """An accuracy with its Wilson 95% interval and a sentence saying how it was measured."""

    accuracy: float
    correct: int
    n: int
    ci_low: float
    ci_high: float
    method: str

    @classmethod
    def from_counts(cls, correct: int, n: int, method: str) -> "AccuracyResult":
        low, high = wilson_interval(correct, n)
        return cls(accuracy=correct / n if n else float("nan"), correct=correct, n=n,
                   ci_low=low, ci_high=high, method=method)


def _p_log_ratio(p_log: Tensor, q_log: Tensor) -> Tensor:
    """Elementwise ``p * (log p - log q)`` with the convention ``0 * anything = 0``."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p))


def kl_exact(ref_log_probs: Tensor, log_probs: Tensor) -> Tensor:
    """KL(P_ref || Q) per row: ``[T, V]`` log-probs of each -> ``[T]`` (nats)."""
    return _p_log_ratio(ref_log_probs, log_probs).sum(-1)


def rest_log_mass(log_probs: Tensor, ids: Tensor) -> Tensor:
    """Log of the probability outside ``ids``: normalised log-probs ``[T, V]``, ids ``[T, k]`` -> ``[T]``.

    Sums the complement's probabilities rather than computing ``log(1 - sum top)``, which cancels
    catastrophically when the top k hold nearly all the mass; exp needs no max shift because
    normalised log-probs are <= 0 (about twice as fast as logsumexp on a 49k vocabulary).
    """
    return log_probs.exp().scatter_(-1, ids, 0.0).sum(-1).log()


def kl_top_k(ref_ids: Tensor, ref_top_log_probs: Tensor, ref_rest_log_prob: Tensor,
             log_probs: Tensor) -> Tensor:
    """KL over the reference's top-k tokens plus one bucket holding the rest of each distribution.

    ``ref_ids`` / ``ref_top_log_probs`` ``[T, k]``, ``ref_rest_log_prob`` ``[T]`` (log of the
    reference's mass outside its top k), ``log_probs`` ``[T, V]`` of the other model -> ``[T]``.
    Merging tokens into one bucket can only lose information, so by the log-sum inequality the
    result is a lower bound on :func:`kl_exact`, equal to it when the bucket is empty.
    """
    top = log_probs.gather(-1, ref_ids)  # [T, k]
    rest = rest_log_mass(log_probs, ref_ids)  # [T]
    return _p_log_ratio(ref_top_log_probs, top).sum(-1) + _p_log_ratio(ref_rest_log_prob, rest)
