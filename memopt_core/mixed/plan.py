"""Mixed precision: per-layer (or per-block) bit widths under an average bits-per-weight budget.

1. ``mixed_context.measure_around_uniform`` measures, around the model quantized uniformly at the
   base width, the change of the loss when ONE unit moves to another width, at the widths of
   :func:`widths_to_measure` (others between the base and the widest are extrapolated).
2. :func:`plan_bits` picks one width per unit minimising the predicted loss, the SUM of the
   chosen units' changes, with the stored weight bytes (codes + fp16 scales + zero points) at
   most the budget: a multiple-choice knapsack solved exactly by dynamic programming over a
   budget grid (unit costs rounded up, so the plan never exceeds the budget).
3. :func:`apply_plan` quantizes a structural copy with each layer's own width (each layer a
   QuantLinear of its bits), so memory and quality are measured on the real thing.

The additive prediction ignores interactions between the units that move; :func:`plan_outcome`
reports the measured quality next to it, and ``mixed_context.plan_and_compare`` measures uniform
quantization at the same accounting beside the plan.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memopt_core.compression.compress import CompressedModel, compress_layers_, structural_copy
from memopt_core.compression.layers import weight_storage_bytes
from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.mixed.sensitivity import QualityProbe
from memopt_core.primitives.packing import packed_nbytes
from memopt_core.primitives.quant import dequantize, quantize_weight

CANDIDATE_BITS = (2, 3, 4, 5, 6, 8)


def widths_to_measure(candidates: tuple[int, ...], base_bits: int, budget_bpw: float) -> tuple[int, ...]:
    """The candidate widths a plan measures: the widest, and those under the base width by at most
    one bit under the budget's whole part (budget 4, base 4: 3 and 8; budget 3: 2, 3 and 8).
    Widths between the base and the widest are extrapolated (``mixed_context``); narrower ones are
    left out of the plan: a unit two bits under the budget must pay for one two bits above it, a
    trade that rarely pays, and measuring it would cost a third more probes."""
    low = math.floor(budget_bpw) - 1
    below = {b for b in candidates if low <= b < base_bits}
    above = {max(candidates)} if max(candidates) > base_bits else set()
    return tuple(sorted(below | above))


RESOLUTION = 1 << 15  # budget grid steps: rounding costs up loses at most units/RESOLUTION of the budget


def weight_bytes(shape: tuple[int, int], cfg: QuantConfig) -> int:
    """Stored bytes of one ``[out, in]`` weight quantized with ``cfg``: packed codes, fp16 scales
    and fp16 zero points (asymmetric), as ``layers.QuantLinear`` holds them."""
    out_f, in_f = shape
    if cfg.granularity == "per-tensor":
        groups = 1
    else:
        size = min(cfg.group_size, in_f) if cfg.granularity == "group" else in_f
        groups = out_f * math.ceil(in_f / size)
    params = 2 if not cfg.symmetric else 1
    return packed_nbytes(out_f * in_f, cfg.bits) + 2 * groups * params


@dataclass
class MixedPrecisionPlan:
    """Bits per unit and per layer; ``base`` holds the other quantization settings."""

    unit_bits: dict[str, int]
    units: dict[str, list[str]]
    shapes: dict[str, tuple[int, int]]
    base: QuantConfig
    budget_bpw: float
    predicted_delta: float
    stored_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits(self) -> dict[str, int]:
        return {name: bits for unit, bits in self.unit_bits.items() for name in self.units[unit]}

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.stored_bytes / sum(o * i for o, i in self.shapes.values())

    def config_for(self, name: str) -> QuantConfig:
        return dataclasses.replace(self.base, bits=self.bits[name])

    def histogram(self) -> dict[int, int]:
        """Weights held at each width."""
        counts: dict[int, int] = {}
        for name, bits in self.bits.items():
            counts[bits] = counts.get(bits, 0) + self.shapes[name][0] * self.shapes[name][1]
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"unit_bits": self.unit_bits, "budget_bpw": self.budget_bpw, "bits_per_weight": self.bits_per_weight,
                "stored_bytes": self.stored_bytes, "predicted_delta": self.predicted_delta,
                "base": dataclasses.asdict(self.base), "weights_by_bits": self.histogram(), **self.extra}


def _backtrack(picks: np.ndarray, steps: np.ndarray, j: int) -> list[int]:
    chosen = []
    for u in range(picks.shape[0] - 1, -1, -1):
        o = int(picks[u, j])
        chosen.append(o)
        j -= steps[u, o]
    return chosen[::-1]


def _choose(costs: np.ndarray, losses: np.ndarray, budget: float) -> list[int] | None:
    """Multiple-choice knapsack: one option per row of ``costs``/``losses`` ``[units, options]``,
    total cost <= ``budget``, least total loss. None when even the cheapest choice is over budget.

    Costs are counted in steps of ``budget / RESOLUTION``, rounded up; the table reaches a few steps
    past the budget (one per unit, what rounding can add) and such plans are checked exactly."""
    step = budget / RESOLUTION
    steps = np.ceil(costs / step).astype(np.int64)  # [units, options]
    size = RESOLUTION + costs.shape[0] + 1
    best = np.full(size, np.inf)  # best[j]: least loss of the units so far using exactly j steps
    best[0] = 0.0
    picks = np.zeros((costs.shape[0], size), dtype=np.int8)
    for u in range(costs.shape[0]):
        new = np.full_like(best, np.inf)
        for o in range(costs.shape[1]):
            c = steps[u, o]
            if c >= size:
                continue
            candidate = np.full_like(best, np.inf)
            candidate[c:] = best[:size - c] + losses[u, o]
            better = candidate < new
            new[better], picks[u, better] = candidate[better], o
        best = new
    for j in np.argsort(best, kind="stable"):  # least loss first; among equals the fewest bytes
        if not np.isfinite(best[j]):
            return None
        chosen = _backtrack(picks, steps, int(j))
        if j <= RESOLUTION or sum(costs[u, o] for u, o in enumerate(chosen)) <= budget:
            return chosen
    return None


def plan_bits(deltas: dict[int, dict[str, float]], units: dict[str, list[str]], shapes: dict[str, tuple[int, int]],
              base: QuantConfig, budget_bpw: float) -> MixedPrecisionPlan:
    """Widths per unit (``deltas[bits][unit]``: measured loss) minimising the summed loss with the
    stored weight bits per weight (scales counted) at most ``budget_bpw``."""
    options = sorted(deltas)
    names = list(units)
    numel = sum(o * i for o, i in shapes.values())
    cost = np.array([[sum(weight_bytes(shapes[n], dataclasses.replace(base, bits=b)) for n in units[u])
                      for b in options] for u in names], dtype=np.float64)  # [units, options]
    loss = np.array([[deltas[b][u] for b in options] for u in names], dtype=np.float64)
    chosen = _choose(cost, loss, budget_bpw * numel / 8)
    if chosen is None:
        floor = 8 * cost.min(axis=1).sum() / numel
        raise ConfigError(f"a budget of {budget_bpw:.3f} bits per weight is below the smallest plan "
                          f"({floor:.3f} with every unit at {options[0]} bits); raise the budget")
    unit_bits = {u: options[o] for u, o in zip(names, chosen)}
    return MixedPrecisionPlan(unit_bits=unit_bits, units=units, shapes=shapes, base=base, budget_bpw=budget_bpw,
                              predicted_delta=float(sum(loss[i, o] for i, o in enumerate(chosen))),
                              stored_bytes=int(sum(cost[i, o] for i, o in enumerate(chosen))))


def error_energy(weight, cfg: QuantConfig) -> float:
    """``||W - Q(W)||^2`` of round-to-nearest with ``cfg`` for ``weight [out, in]`` (not changed)."""
    return float((dequantize(quantize_weight(weight, cfg)) - weight.detach().float()).pow(2).sum())


def apply_plan(original, plan: MixedPrecisionPlan) -> CompressedModel:
    """A structural copy of ``original`` (an ``nn.Module``) with each planned layer quantized at its own width."""
    start = time.perf_counter()
    model = structural_copy(original)
    for name in plan.bits:
        compress_layers_(model, [name], None, plan.config_for(name))
    return CompressedModel(model=model, target_names=list(plan.bits), simulated=plan.base.storage == "fake",
                           timings={"quantize_s": time.perf_counter() - start})


def plan_outcome(probe: QualityProbe, compressed: CompressedModel, plan: MixedPrecisionPlan) -> dict[str, Any]:
    """Predicted (summed unit losses) against measured loss of the applied plan, and its bytes.
    With KL as the loss, the predicted perplexity is ``exp(baseline NLL + summed KL)``: the NLL
    rises by the KL on average over the model's own predictions, about so on real text."""
    score, delta, kl = probe.measure(compressed.model)
    stored = sum(weight_storage_bytes(compressed.model.get_submodule(n)) for n in compressed.target_names)
    measured = kl if plan.extra.get("loss") == "kl" else delta
    out = {"metric": probe.metric, "loss": plan.extra.get("loss", probe.metric), "baseline": probe.baseline,
           "predicted_loss": plan.predicted_delta, "measured_loss": measured, "measured_delta": delta,
           "measured_score": score, "kl": kl, "stored_weight_bytes": stored,
           "planned_weight_bytes": plan.stored_bytes, "bits_per_weight": plan.bits_per_weight}
    if probe.metric == "nll":
        out.update(predicted_perplexity=math.exp(probe.baseline + plan.predicted_delta),
                   measured_perplexity=math.exp(score), baseline_perplexity=math.exp(probe.baseline))
    return out


def uniform_plan_of(units: dict[str, list[str]], shapes: dict[str, tuple[int, int]], base: QuantConfig,
                    predicted: float = 0.0, extra: dict[str, Any] | None = None) -> MixedPrecisionPlan:
    """Every unit at the base width: uniform quantization, held to the plans' accounting."""
    stored = sum(weight_bytes(shapes[n], base) for names in units.values() for n in names)
    numel = sum(shapes[n][0] * shapes[n][1] for names in units.values() for n in names)
    return MixedPrecisionPlan(unit_bits={u: base.bits for u in units}, units=units, shapes=shapes, base=base,
                              budget_bpw=8 * stored / numel, predicted_delta=predicted, stored_bytes=stored,
                              extra=dict(extra or {}))
