"""Mixed-precision plans measured at the operating point, not in isolation (:func:`plan_and_compare`).

Measured in isolation (one unit quantized, the rest dense; ``sensitivity.py``), per-unit losses do
not add up once many units are quantized: on SmolLM2 a 3/4/8-bit plan predicted a KL of 0.55 from
the isolated figures and measured 0.79, worse than uniform 4-bit. So the plan is built around the
point it moves away from: the whole model at the base width (uniform), then ONE unit moved to
another width at a time. Each figure is then the change of the loss from uniform's, with every
other layer already quantized, and a plan's predicted loss is

    L(plan) ~= L(uniform) + sum over units of [L(uniform, unit u at b_u) - L(uniform)].

Widths above the base that are not measured get the measured top width's gain scaled by the
share of weight error energy they remove: ``(E_base - E_b) / (E_base - E_top)``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from memopt_core.compression.compress import compress_layers_
from memopt_core.compression.walk import effective_weight, set_module, target_linears
from memopt_core.config import QuantConfig, TargetConfig
from memopt_core.errors import ConfigError
from memopt_core.mixed.plan import (CANDIDATE_BITS, MixedPrecisionPlan, apply_plan, error_energy, plan_bits,
                                    plan_outcome, uniform_plan_of, widths_to_measure)
from memopt_core.mixed.sensitivity import DEFAULT_EVAL, Progress, QualityProbe, units_of


@dataclass
class ContextSensitivity:
    """``changes[b][unit]``: the loss with ``unit`` at ``b`` bits and every other unit at the base
    width, minus ``uniform_loss`` (negative where the unit gains). ``loss``: 'kl' or the metric."""

    base: QuantConfig
    by: str
    units: dict[str, list[str]]
    shapes: dict[str, tuple[int, int]]
    uniform_loss: float
    changes: dict[int, dict[str, float]]
    loss: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"base": dataclasses.asdict(self.base), "by": self.by, "uniform_loss": self.uniform_loss,
                "loss": self.loss, "changes": self.changes, "seconds": self.seconds}


def _loss(probe: QualityProbe, model) -> float:
    _, delta, kl = probe.measure(model)
    return kl if kl is not None else delta


def measure_around_uniform(source, base: QuantConfig, widths: tuple[int, ...], by: str = "layer",
                           targets: TargetConfig | None = None, probe: QualityProbe | None = None,
                           progress: Progress | None = None) -> ContextSensitivity:
    """One probe per unit and width of ``widths`` (the base width needs none: its change is 0)."""
    loaded = getattr(source, "loaded", source)
    probe = probe or QualityProbe(loaded, DEFAULT_EVAL)
    start = time.perf_counter()
    modules = target_linears(loaded.model, targets)
    units = units_of(list(modules), by)
    shapes = {n: (m.out_features, m.in_features) for n, m in modules.items()}
    model = apply_plan(loaded.model, uniform_plan_of(units, shapes, base)).model
    uniform_loss = _loss(probe, model)
    others = [b for b in widths if b != base.bits]
    changes = {b: {} for b in others}
    total = len(others) * len(units)
    for index, bits in enumerate(others):
        for done, (unit, names) in enumerate(units.items()):
            if progress is not None:
                progress(index * len(units) + done, total, f"{bits} bits: {unit}")
            saved = {name: model.get_submodule(name) for name in names}
            for name in names:  # the original Linear, quantized anew at this width (never changed)
                set_module(model, name, loaded.model.get_submodule(name))
            compress_layers_(model, names, None, dataclasses.replace(base, bits=bits))
            changes[bits][unit] = _loss(probe, model) - uniform_loss
            for name, module in saved.items():
                set_module(model, name, module)
    if progress is not None:
        progress(1, 1, "done")
    changes[base.bits] = {unit: 0.0 for unit in units}
    loss = "kl" if probe.causal else probe.metric
    return ContextSensitivity(base, by, units, shapes, uniform_loss, changes, loss, time.perf_counter() - start)


def changes_at(context: ContextSensitivity, weights: dict[str, Any],
               bits: tuple[int, ...]) -> dict[int, dict[str, float]]:
    """``context.changes`` at every width of ``bits``: measured ones as they are; a width above the
    base between it and the widest measured one is extrapolated (module doc). Widths below the base
    must have been measured."""
    base = context.base.bits
    energies: dict[tuple[str, int], float] = {}

    def energy(unit: str, width: int) -> float:
        if (unit, width) not in energies:
            cfg = dataclasses.replace(context.base, bits=width)
            energies[unit, width] = sum(error_energy(weights[n], cfg) for n in context.units[unit])
        return energies[unit, width]

    out = {}
    for b in bits:
        if b in context.changes:
            out[b] = dict(context.changes[b])
            continue
        above = [m for m in context.changes if m > b]
        if b < base or not above:
            raise ConfigError(f"{b} bits was not measured around the uniform {base}-bit model; measure it")
        top = max(above)
        out[b] = {}
        for unit in context.units:
            removed = energy(unit, base) - energy(unit, top)
            share = (energy(unit, base) - energy(unit, b)) / removed if removed > 0 else 1.0
            out[b][unit] = context.changes[top][unit] * share
    return out


def plan_around_uniform(context: ContextSensitivity, source, budget_bpw: float,
                        bits: tuple[int, ...]) -> MixedPrecisionPlan:
    """:func:`plan_bits` over ``bits`` from ``context``: the predicted loss is the uniform model's
    plus the chosen units' changes."""
    loaded = getattr(source, "loaded", source)
    weights = {n: effective_weight(loaded.model.get_submodule(n)).detach()
               for names in context.units.values() for n in names}
    changes = changes_at(context, weights, bits)
    plan = plan_bits(changes, context.units, context.shapes, context.base, budget_bpw)
    plan.predicted_delta += context.uniform_loss
    plan.extra.update(loss=context.loss, by=context.by, uniform_loss=context.uniform_loss,
                      measured_bits=sorted(context.changes),
                      extrapolated_bits=[b for b in bits if b not in context.changes],
                      sensitivity_seconds=context.seconds, measured_around="uniform")
    return plan


@dataclass
class PlanComparison:
    """A mixed-precision plan and uniform quantization at the base width, each applied and measured
    by the same probe (``outcome`` / ``uniform``: :func:`plan_outcome` dicts)."""

    plan: MixedPrecisionPlan
    outcome: dict[str, Any]
    uniform_plan: MixedPrecisionPlan
    uniform: dict[str, Any]
    sensitivity: ContextSensitivity

    def to_dict(self, with_sensitivity: bool = False) -> dict[str, Any]:
        out = {"plan": self.plan.to_dict(), "outcome": self.outcome, "uniform_plan": self.uniform_plan.to_dict(),
               "uniform": self.uniform}
        if with_sensitivity:
            out["sensitivity"] = self.sensitivity.to_dict()
        return out


def plan_and_compare(source, base: QuantConfig, budget_bpw: float, by: str = "layer",
                     probe: QualityProbe | None = None, targets: TargetConfig | None = None,
                     progress: Progress | None = None, bits: tuple[int, ...] = CANDIDATE_BITS) -> PlanComparison:
    """Measure every unit at :func:`widths_to_measure` around the uniform ``base`` model, plan
    ``bits`` under ``budget_bpw``, apply the plan and uniform ``base.bits`` to copies, and measure
    both with ``probe``."""
    loaded = getattr(source, "loaded", source)
    probe = probe or QualityProbe(loaded, DEFAULT_EVAL)
    measured = widths_to_measure(bits, base.bits, budget_bpw)
    context = measure_around_uniform(loaded, base, measured, by=by, targets=targets, probe=probe, progress=progress)
    lowest = min(context.changes)
    plan = plan_around_uniform(context, loaded, budget_bpw, tuple(b for b in bits if b >= lowest))
    uniform = uniform_plan_of(context.units, context.shapes, base, context.uniform_loss,
                              {"loss": context.loss, "by": by})
    return PlanComparison(plan, plan_outcome(probe, apply_plan(loaded.model, plan), plan),
                          uniform, plan_outcome(probe, apply_plan(loaded.model, uniform), uniform), context)
