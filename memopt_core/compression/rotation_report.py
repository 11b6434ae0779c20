"""Why a Hadamard rotation helps or hurts a model: measured per layer, with and without rotation.

For each targeted Linear (weight ``W [out, in]``, inputs ``X [tokens, in]`` from a forward pass):

- **absmax / RMS of the rows** before and after rotation (``W`` vs ``W Q``): the grid's step is set
  by the absmax, the error it causes by the step, so a higher ratio means a coarser grid for the
  same RMS. Rotation pulls every row towards a Gaussian (ratio ~3.5 for a block of 64): it lowers
  the ratio of rows with outliers and *raises* it for rows that are flatter than a Gaussian;
- **where the error lands**: the weight error ``E = W' - W`` (in the original basis) reaches the
  output as ``X E^T``; input channel ``j`` carries about ``mean(X_j^2) * ||E_:,j||^2`` of it. The
  share of that carried by the few channels with the largest activations, and the relative output
  error ``||X E^T||^2 / ||X W^T||^2``, are reported for both.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from memopt_core.compression.walk import effective_weight, target_linears
from memopt_core.config import QuantConfig
from memopt_core.primitives.formats.hadamard import absmax_to_rms, random_signs, rotate_weight, unrotate_weight
from memopt_core.primitives.formats.registry import dequantize_format, quantize_format
from memopt_core.primitives.quant import dequantize, quantize_weight

TOP_CHANNELS = 8


@dataclass
class RotationLayerReport:
    layer: str
    absmax_to_rms: tuple[float, float]  # rows' mean, (plain, rotated)
    activation_share: float  # share of the inputs' energy in the top channels
    error_share: tuple[float, float]  # share of the output error through the top channels, (plain, rotated)
    output_error: tuple[float, float]  # ||X E^T||^2 / ||X W^T||^2, (plain, rotated)


def _quantized(w: torch.Tensor, quant: QuantConfig) -> torch.Tensor:
    if quant.format == "int":
        return dequantize(quantize_weight(w, quant))
    return dequantize_format(quantize_format(w, quant.format, quant.double_quant, quant.granularity == "per-channel"))


def _shares(x: torch.Tensor, w: torch.Tensor, error: torch.Tensor, top: torch.Tensor) -> tuple[float, float]:
    """(share of the per-channel output error in ``top`` channels, relative output error)."""
    per_channel = x.pow(2).mean(0) * error.pow(2).sum(0)  # [in]
    share = (per_channel[top].sum() / per_channel.sum().clamp_min(1e-30)).item()
    relative = ((x @ error.T).pow(2).sum() / (x @ w.T).pow(2).sum().clamp_min(1e-30)).item()
    return share, relative


def layer_report(name: str, weight: torch.Tensor, inputs: torch.Tensor, quant: QuantConfig,
                 top_k: int = TOP_CHANNELS) -> RotationLayerReport:
    """The report of one layer: ``weight [out, in]`` and its ``inputs [tokens, in]`` (neither changed);
    ``quant`` without rotation (both variants are computed)."""
    w, x = weight.detach().float(), inputs.detach().float().reshape(-1, weight.shape[1])
    signs = random_signs(w.shape[1]).to(w.device)
    rotated = rotate_weight(w, signs)
    plain_error = _quantized(w, quant) - w
    rotated_error = unrotate_weight(_quantized(rotated, quant), signs) - w
    energy = x.pow(2).mean(0)
    top = energy.topk(min(top_k, energy.numel())).indices
    plain, turned = _shares(x, w, plain_error, top), _shares(x, w, rotated_error, top)
    return RotationLayerReport(name, (absmax_to_rms(w).mean().item(), absmax_to_rms(rotated).mean().item()),
                               (energy[top].sum() / energy.sum()).item(), (plain[0], turned[0]), (plain[1], turned[1]))


@torch.no_grad()
def rotation_reports(model: nn.Module, tokens: torch.Tensor, quant: QuantConfig,
                     names: list[str] | None = None) -> list[RotationLayerReport]:
    """:func:`layer_report` of every targeted Linear (or ``names``), inputs captured by hooks while
    ``model`` (not changed) runs ``tokens [samples, length]``; each layer is reported in its hook, so
    only one layer's inputs are held at a time."""
    quant = dataclasses.replace(quant, rotate="none")
    layers = target_linears(model) if names is None else {n: model.get_submodule(n) for n in names}
    reports: list[RotationLayerReport] = []

    def hook(name):
        def record(module, args, output):
            reports.append(layer_report(name, effective_weight(module), args[0], quant))
        return record
    handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
    try:
        model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return reports


def summary(reports: list[RotationLayerReport]) -> dict[str, float]:
    """Means over layers, and the fraction of layers whose output error rotation lowers."""
    n = max(len(reports), 1)
    mean = lambda values: sum(values) / n  # noqa: E731 - a local shorthand
    return {"absmax_to_rms_plain": mean(r.absmax_to_rms[0] for r in reports),
            "absmax_to_rms_rotated": mean(r.absmax_to_rms[1] for r in reports),
            "activation_share_top": mean(r.activation_share for r in reports),
            "error_share_top_plain": mean(r.error_share[0] for r in reports),
            "error_share_top_rotated": mean(r.error_share[1] for r in reports),
            "output_error_plain": mean(r.output_error[0] for r in reports),
            "output_error_rotated": mean(r.output_error[1] for r in reports),
            "layers_helped": sum(r.output_error[1] < r.output_error[0] for r in reports) / n}
