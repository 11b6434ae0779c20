"""What scoring a causal LM on token windows produces: the model's per-token reference (kept for
comparing other models against it, on disk too) and its summary metrics."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from memopt_core.errors import DataError
from memopt_core.evaluation.stats import kl_exact, kl_top_k

# Per-token tensors of an LMReference, in the order they are saved.
REFERENCE_FIELDS = ("targets", "top1", "nll", "log_probs", "top_ids", "top_log_probs", "rest_log_prob")


@dataclass(frozen=True, eq=False)
class LMReference:
    """What a model's run keeps for comparing other models against it.

    One row per prediction in window order (``n_windows * (seq_len - 1)`` rows), on the CPU:
    ``targets`` [N] the text's next tokens (proves both runs saw the same windows), ``top1`` [N]
    the model's argmax, ``nll`` [N] float64 its loss on each target (for the paired difference of
    another model's loss), and either ``log_probs`` [N, vocab] (exact KL; costly for large
    vocabularies) or ``top_ids`` / ``top_log_probs`` [N, k] with ``rest_log_prob`` [N], the log of
    the mass outside the top k (KL lower bound). ``diverged`` marks a run stopped by NaN/Inf.
    """

    targets: Tensor
    top1: Tensor
    nll: Tensor | None = None
    log_probs: Tensor | None = None
    top_ids: Tensor | None = None
    top_log_probs: Tensor | None = None
    rest_log_prob: Tensor | None = None
    diverged: bool = False

    @property
    def tokens(self) -> int:
        """Rows held: predictions of the windows this reference covers."""
        return int(self.top1.numel())

    @property
    def top_k(self) -> int | None:
        """k of the stored top-k, or None when full log-probs are kept."""
        return None if self.top_ids is None else int(self.top_ids.shape[1])

    @property
    def kl_method(self) -> str:
        return "exact" if self.top_k is None else f"top-{self.top_k} + rest bucket"

    def covering(self, rows: int) -> "LMReference":
        """This reference, which must already hold ``rows`` rows (a lazily built one scores them first)."""
        if self.tokens < rows:
            raise DataError(f"the reference holds {self.tokens} predictions, {rows} are needed")
        return self

    def kl(self, start: int, log_probs: Tensor) -> Tensor:
        """KL(reference || other) for rows ``start:start+T`` given the other's log-probs [T, V] -> [T]."""
        rows = slice(start, start + log_probs.shape[0])
        device = log_probs.device
        if self.log_probs is not None:
            return kl_exact(self.log_probs[rows].to(device), log_probs)
        return kl_top_k(self.top_ids[rows].to(device), self.top_log_probs[rows].to(device),
                        self.rest_log_prob[rows].to(device), log_probs)

    def head(self, rows: int) -> "LMReference":
        """The first ``rows`` rows (views, no copy)."""
        return LMReference(diverged=self.diverged, **{name: None if value is None else value[:rows]
                                                      for name, value in self.tensors().items()})

    def tensors(self) -> dict[str, Tensor | None]:
        return {name: getattr(self, name) for name in REFERENCE_FIELDS}

    @classmethod
    def join(cls, targets: Tensor, parts: list[dict[str, Tensor]], diverged: bool = False) -> "LMReference":
        """A reference from the per-batch rows a scoring run collected (``targets`` [N] of all its windows)."""
        if not parts:
            return cls(targets=targets.cpu(), top1=torch.empty(0, dtype=torch.long),
                       nll=torch.empty(0, dtype=torch.float64), diverged=diverged)
        joined = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        return cls(targets=targets.cpu()[:joined["top1"].numel()], diverged=diverged, **joined)


@dataclass(frozen=True)
class LMMetrics:
    """Quality of a causal LM on a set of windows. KL fields are None without a reference;
    a diverged run has infinite perplexity, NaN accuracies and says why in ``reason``.

    ``exact`` is False for a run stopped before its last window (early stop or cancel): its
    figures are an estimate from ``tokens`` of ``total_tokens`` predictions, with 95% intervals
    (``*_ci95``, by ``interval``). ``perplexity_ratio`` is perplexity / the original's perplexity
    on the same tokens (None without a reference)."""

    perplexity: float
    mean_nll: float
    tokens: int
    top1_accuracy: float
    seconds: float
    latency_ms_per_window: float
    windows: int
    seq_len: int
    diverged: bool = False
    reason: str = ""
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    kl_method: str | None = None
    perplexity_ratio: float | None = None
    exact: bool = True
    total_tokens: int | None = None
    interval: str | None = None
    perplexity_ci95: list[float] | None = None
    ratio_ci95: list[float] | None = None
    kl_ci95: list[float] | None = None
    top1_agreement_ci95: list[float] | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.windows * self.seq_len / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Estimate:
    """The figures after ``windows`` of ``total_windows`` windows; ``exact`` when all are scored.

    Intervals are 95% (``[low, high]``, None while undefined, e.g. after one window for the
    ``window`` method); ratio, KL and agreement are None without a reference."""

    tokens: int
    windows: int
    total_windows: int
    seconds: float
    interval: str
    perplexity: float
    perplexity_ci95: list[float] | None
    perplexity_ratio: float | None = None
    ratio_ci95: list[float] | None = None
    kl_divergence: float | None = None
    kl_ci95: list[float] | None = None
    top1_agreement: float | None = None
    top1_agreement_ci95: list[float] | None = None

    @property
    def exact(self) -> bool:
        return self.windows == self.total_windows

    @property
    def ratio_half_width(self) -> float:
        """Relative half-width of the ratio's interval (0.02 = +-2%); inf while undefined."""
        if self.ratio_ci95 is None or not self.perplexity_ratio:
            return math.inf
        low, high = self.ratio_ci95
        return max(high / self.perplexity_ratio - 1, 1 - low / self.perplexity_ratio)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "windows": self.windows, "total_windows": self.total_windows,
                "exact": self.exact, "seconds": self.seconds, "perplexity": self.perplexity,
                "perplexity_ci95": self.perplexity_ci95, "perplexity_ratio": self.perplexity_ratio,
                "ratio_ci95": self.ratio_ci95, "kl_divergence": self.kl_divergence, "kl_ci95": self.kl_ci95,
                "top1_agreement": self.top1_agreement, "top1_agreement_ci95": self.top1_agreement_ci95,
                "interval": self.interval}
