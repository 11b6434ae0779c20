"""Mixed precision: per-layer (or per-block) bit widths under an average bits-per-weight budget.

1. :func:`measure_candidates` measures each unit's sensitivity (quality loss when only it is
   quantized, see sensitivity.py) at candidate widths: the base width and those at most one bit under the budget
   (:func:`widths_to_measure`); wider ones are extrapolated from the base by the weight error.
2. :func:`plan_bits` picks one width per unit minimising the predicted loss, the SUM of the
   chosen units' losses, with the stored weight bytes (codes + fp16 scales + zero points) at
   most the budget: a multiple-choice knapsack solved exactly by dynamic programming over a
   budget grid (unit costs rounded up, so the plan never exceeds the budget).
3. :func:`apply_plan` quantizes a structural copy with each layer's own width (each layer a
   QuantLinear of its bits), so memory and quality are measured on the real thing.

The additive prediction ignores interactions between layers; :func:`plan_outcome` reports the
measured quality next to it.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memopt_core.compress import CompressedModel, structural_copy
from memopt_core.config import EvalConfig, QuantConfig, TargetConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.packing import packed_nbytes
from memopt_core.quantize import quantize_
from memopt_core.sensitivity import DEFAULT_EVAL, Progress, QualityProbe, SensitivityResult, measure_sensitivity
from memopt_core.primitives.quant import dequantize, quantize_weight
from memopt_core.walk import effective_weight, target_linears

CANDIDATE_BITS = (2, 3, 4, 5, 6, 8)


def widths_to_measure(candidates: tuple[int, ...], base_bits: int, budget_bpw: float) -> tuple[int, ...]:
    """The candidate widths a plan measures: those up to the base width and at most one bit under
    the budget's whole part (budget 4: 3 and 4; budget 3: 2, 3 and 4). Wider candidates are
    extrapolated from the base width by the weight error (fair where the loss is small); narrower
    ones are left out of the plan: a unit two bits under the budget must pay for one two bits
    above it, a trade that rarely pays, and measuring it would cost a third more probes."""
    low = math.floor(budget_bpw) - 1
    measured = {b for b in candidates if low <= b <= base_bits} | {base_bits}
    return tuple(sorted(measured))
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


def measure_candidates(source, base: QuantConfig, bits: tuple[int, ...] = CANDIDATE_BITS, by: str = "layer",
                       eval_config: EvalConfig | None = None, targets: TargetConfig | None = None,
                       probe: QualityProbe | None = None, progress: Progress | None = None
                       ) -> dict[int, SensitivityResult]:
    """Sensitivity of every unit at every candidate width (one shared probe and baseline).
    ``progress(done, total, label)`` counts unit probes over all widths."""
    loaded = getattr(source, "loaded", source)
    probe = probe or QualityProbe(loaded, eval_config or DEFAULT_EVAL)
    results = {}
    for index, b in enumerate(bits):
        def step(done: int, total: int, unit: str, index=index, b=b) -> None:
            if progress is not None and unit != "done":
                progress(index * total + done, len(bits) * total, f"{b} bits: {unit}")
        results[b] = measure_sensitivity(loaded, dataclasses.replace(base, bits=b), by=by, targets=targets,
                                         probe=probe, progress=step)
    if progress is not None:
        progress(1, 1, "done")
    return results


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


def extrapolate(deltas: dict[int, dict[str, float]], units: dict[str, list[str]], weights: dict[str, Any],
                base: QuantConfig, bits: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """Deltas at every width of ``bits``: measured ones as they are; a width above the lowest
    measured one scales the nearest lower measured width's delta by the unit's ratio of weight error
    energy, ``sum ||W - Q_b(W)||^2`` over its layers (``weights``: name -> ``[out, in]``). A proxy
    assuming the loss grows in proportion to the weight noise: fair where the loss is small (more
    bits), badly optimistic below (2-bit damage grows much faster), so lower widths must be measured."""
    out = {b: dict(deltas[b]) for b in deltas}
    for b in bits:
        if b in out:
            continue
        below = [m for m in deltas if m < b]
        if not below:
            raise ConfigError(f"{b} bits lies below every measured width ({sorted(deltas)}); measure it")
        ref = max(below)
        out[b] = {}
        for unit, names in units.items():
            e_b = sum(error_energy(weights[n], dataclasses.replace(base, bits=b)) for n in names)
            e_ref = sum(error_energy(weights[n], dataclasses.replace(base, bits=ref)) for n in names)
            out[b][unit] = deltas[ref][unit] * (e_b / e_ref if e_ref > 0 else 1.0)
    return out


def plan_from_sensitivity(results: dict[int, SensitivityResult], source, base: QuantConfig, budget_bpw: float,
                          targets: TargetConfig | None = None, bits: tuple[int, ...] | None = None,
                          loss: str = "kl") -> MixedPrecisionPlan:
    """:func:`plan_bits` over the widths ``bits`` (default: those measured) from
    :func:`measure_candidates`' results on ``source``'s model; widths not measured are
    :func:`extrapolate`-d. ``loss``: what is summed, ``kl`` (causal LMs) or ``delta`` (see
    ``SensitivityResult.losses``; both floored at 0 so measurement noise is never "gained")."""
    loaded = getattr(source, "loaded", source)
    modules = target_linears(loaded.model, targets)
    shapes = {n: (m.out_features, m.in_features) for n, m in modules.items()}
    first = next(iter(results.values()))
    units = {row.unit: row.layers for row in first.rows}
    bits = tuple(sorted(bits or results))
    measured = {b: r.losses(loss) for b, r in results.items()}
    weights = {n: effective_weight(modules[n]).detach() for names in units.values() for n in names}
    deltas = {b: d for b, d in extrapolate(measured, units, weights, base, bits).items() if b in bits}
    plan = plan_bits(deltas, units, shapes, base, budget_bpw)
    used = "kl" if loss == "kl" and all(row.kl is not None for row in first.rows) else first.metric
    plan.extra.update(metric=first.metric, loss=used, by=first.by, baseline=first.baseline, measured_bits=sorted(results),
                      extrapolated_bits=[b for b in bits if b not in results],
                      sensitivity_seconds=sum(r.seconds for r in results.values()))
    return plan


def apply_plan(original, plan: MixedPrecisionPlan) -> CompressedModel:
    """A structural copy of ``original`` (an ``nn.Module``) with each planned layer quantized at its own width."""
    import torch

    start = time.perf_counter()
    model = structural_copy(original)
    with torch.inference_mode(False), torch.no_grad():
        for name in plan.bits:
            quantize_(model, plan.config_for(name), [name])
    return CompressedModel(model=model, target_names=list(plan.bits), simulated=plan.base.storage == "fake",
                           timings={"quantize_s": time.perf_counter() - start})


def plan_outcome(probe: QualityProbe, compressed: CompressedModel, plan: MixedPrecisionPlan) -> dict[str, Any]:
    """Predicted (summed unit losses) against measured loss of the applied plan, and its bytes.
    With KL as the loss, the predicted perplexity is ``exp(baseline NLL + summed KL)``: the NLL
    rises by the KL on average over the model's own predictions, about so on real text."""
    from memopt_core.layers import weight_storage_bytes

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


def uniform_plan(plan: MixedPrecisionPlan, losses: dict[str, float]) -> MixedPrecisionPlan:
    """Every unit of ``plan`` at the base width (``losses``: unit -> loss at that width): the plan's
    natural competitor, uniform quantization, held to the same accounting."""
    bits = plan.base.bits
    stored = sum(weight_bytes(plan.shapes[n], plan.base) for names in plan.units.values() for n in names)
    numel = sum(o * i for o, i in plan.shapes.values())
    return MixedPrecisionPlan(unit_bits={u: bits for u in plan.units}, units=plan.units, shapes=plan.shapes,
                              base=plan.base, budget_bpw=8 * stored / numel,
                              predicted_delta=float(sum(losses[u] for u in plan.units)), stored_bytes=stored,
                              extra={k: plan.extra[k] for k in ("metric", "loss", "by") if k in plan.extra})


@dataclass
class PlanComparison:
    """A mixed-precision plan and uniform quantization at the base width, each applied and measured
    by the same probe (``outcome`` / ``uniform``: :func:`plan_outcome` dicts)."""

    plan: MixedPrecisionPlan
    outcome: dict[str, Any]
    uniform_plan: MixedPrecisionPlan
    uniform: dict[str, Any]
    sensitivity: dict[int, SensitivityResult]

    def to_dict(self, with_sensitivity: bool = False) -> dict[str, Any]:
        out = {"plan": self.plan.to_dict(), "outcome": self.outcome, "uniform_plan": self.uniform_plan.to_dict(),
               "uniform": self.uniform}
        if with_sensitivity:
            out["sensitivity"] = {b: r.to_dict() for b, r in self.sensitivity.items()}
        return out


def plan_and_compare(source, base: QuantConfig, budget_bpw: float, by: str = "layer",
                     probe: QualityProbe | None = None, targets: TargetConfig | None = None,
                     progress: Progress | None = None, bits: tuple[int, ...] = CANDIDATE_BITS) -> PlanComparison:
    """Measure every unit at :func:`widths_to_measure`, plan ``bits`` under ``budget_bpw``, apply the
    plan and uniform ``base.bits`` to copies, and measure both with ``probe``."""
    loaded = getattr(source, "loaded", source)
    probe = probe or QualityProbe(loaded, DEFAULT_EVAL)
    measured = widths_to_measure(bits, base.bits, budget_bpw)
    results = measure_candidates(loaded, base, bits=measured, by=by, targets=targets, probe=probe, progress=progress)
    plan = plan_from_sensitivity(results, loaded, base, budget_bpw, targets=targets,
                                 bits=tuple(b for b in bits if b >= measured[0]))
    uniform = uniform_plan(plan, results[base.bits].losses(plan.extra["loss"]))
    return PlanComparison(plan, plan_outcome(probe, apply_plan(loaded.model, plan), plan),
                          uniform, plan_outcome(probe, apply_plan(loaded.model, uniform), uniform), results)
