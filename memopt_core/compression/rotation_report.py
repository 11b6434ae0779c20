"""Why a Hadamard rotation helps or hurts a model: measured per layer, with and without rotation.

For each targeted Linear (weight ``W [out, in]``, inputs ``X`` from a forward pass):

- **absmax / RMS of the rows** before and after rotation (``W`` vs ``W Q``): the grid's step is set
  by the absmax, the error it causes by the step. Rotation pulls every row towards a Gaussian:
  it lowers the ratio of rows with outliers and raises it for rows flatter than a Gaussian;
- **where the error lands**: the weight error ``E = W' - W`` (in the original basis) reaches the
  output as ``X E^T``. Input channel ``j`` carries about ``mean(X_j^2) * ||E_:,j||^2`` of it: the
  share carried by the few channels with the largest activations is reported, and the relative
  output error ``||X E^T||^2 / ||X W^T||^2`` separately for the first token of each sequence (in
  LLMs the attention sink, whose activations are hundreds of times larger in a few channels and
  whose value vector is nearly zero) and for the other tokens;
- **where rotation helps**: the relative error of the layer's *inputs* quantized to 4 bits per token
  (simulated, as a W4A4 scheme would), plain and rotated: outlier channels set the per-token scale,
  and rotation spreads them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from memopt_core.compression.walk import effective_weight, target_linears
from memopt_core.config import QuantConfig
from memopt_core.primitives.formats.hadamard import (absmax_to_rms, random_signs, rotate_input, rotate_weight,
                                                     unrotate_weight)
from memopt_core.primitives.formats.registry import dequantize_format, quantize_format
from memopt_core.primitives.quant import dequantize, quantize_weight

TOP_CHANNELS = 8


@dataclass
class RotationLayerReport:
    layer: str
    absmax_to_rms: tuple[float, float]  # rows' mean, (plain, rotated)
    activation_share: float  # share of the inputs' energy in the top channels
    error_share: tuple[float, float]  # share of the output error through the top channels, (plain, rotated)
    first_token_error: tuple[float, float]  # ||x_0 E^T||^2 / ||x_0 W^T||^2 over sequences, (plain, rotated)
    other_tokens_error: tuple[float, float]  # the same over the other tokens, (plain, rotated)
    activation_error: tuple[float, float]  # ||X - A4(X)||^2 / ||X||^2, per-token 4-bit, X or X Q (simulated)


def _quantized(w: torch.Tensor, quant: QuantConfig) -> torch.Tensor:
    if quant.format == "int":
        return dequantize(quantize_weight(w, quant))
    return dequantize_format(quantize_format(w, quant.format, quant.double_quant, quant.granularity == "per-channel"))


def _relative(x: torch.Tensor, w: torch.Tensor, error: torch.Tensor) -> float:
    """``||x E^T||^2 / ||x W^T||^2`` for inputs ``x [n, in]``."""
    return ((x @ error.T).pow(2).sum() / (x @ w.T).pow(2).sum().clamp_min(1e-30)).item()


def activation_int4_error(x: torch.Tensor) -> float:
    """Relative error ``||X - A(X)||^2 / ||X||^2`` of simulated 4-bit activations: symmetric round to
    nearest, one scale (absmax / 7) per token. Activations are not quantized in memopt's runs: this
    only measures what a W4A4 scheme would face, with and without rotation."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 7
    return ((x - (x / scale).round().clamp(-8, 7) * scale).pow(2).sum() / x.pow(2).sum().clamp_min(1e-30)).item()


def _channel_share(x: torch.Tensor, error: torch.Tensor, top: torch.Tensor) -> float:
    per_channel = x.pow(2).mean(0) * error.pow(2).sum(0)  # [in]
    return (per_channel[top].sum() / per_channel.sum().clamp_min(1e-30)).item()


def layer_report(name: str, weight: torch.Tensor, inputs: torch.Tensor, quant: QuantConfig,
                 top_k: int = TOP_CHANNELS) -> RotationLayerReport:
    """The report of one layer: ``weight [out, in]`` and its ``inputs [sequences, tokens, in]`` (or
    ``[tokens, in]``: one sequence); neither is changed. ``quant`` without rotation (both are computed)."""
    w = weight.detach().float()
    x = inputs.detach().float().reshape(-1 if inputs.dim() > 2 else 1, *inputs.shape[-2:])  # [seq, tokens, in]
    first, rest, every = x[:, 0], x[:, 1:].reshape(-1, w.shape[1]), x.reshape(-1, w.shape[1])
    signs = random_signs(w.shape[1]).to(w.device)
    rotated = rotate_weight(w, signs)
    errors = (_quantized(w, quant) - w, unrotate_weight(_quantized(rotated, quant), signs) - w)
    energy = every.pow(2).mean(0)
    top = energy.topk(min(top_k, energy.numel())).indices
    return RotationLayerReport(
        name, (absmax_to_rms(w).mean().item(), absmax_to_rms(rotated).mean().item()),
        (energy[top].sum() / energy.sum()).item(), tuple(_channel_share(every, e, top) for e in errors),
        tuple(_relative(first, w, e) for e in errors),
        tuple(_relative(rest, w, e) if rest.numel() else float("nan") for e in errors),
        (activation_int4_error(every), activation_int4_error(rotate_input(every, signs))))


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


def module_type(name: str) -> str:
    """'self_attn.v_proj' of 'model.layers.3.self_attn.v_proj' (the name after the block index)."""
    parts = name.split(".")
    digits = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[digits[0] + 1:]) if digits else name


def summary(reports: list[RotationLayerReport]) -> dict[str, float]:
    """Means over layers, and the fraction of layers whose error (other tokens) rotation lowers."""
    n = max(len(reports), 1)
    mean = lambda values: sum(values) / n  # noqa: E731 - a local shorthand
    return {"absmax_to_rms_plain": mean(r.absmax_to_rms[0] for r in reports),
            "absmax_to_rms_rotated": mean(r.absmax_to_rms[1] for r in reports),
            "activation_share_top": mean(r.activation_share for r in reports),
            "error_share_top_plain": mean(r.error_share[0] for r in reports),
            "error_share_top_rotated": mean(r.error_share[1] for r in reports),
            "first_token_error_plain": mean(r.first_token_error[0] for r in reports),
            "first_token_error_rotated": mean(r.first_token_error[1] for r in reports),
            "other_tokens_error_plain": mean(r.other_tokens_error[0] for r in reports),
            "other_tokens_error_rotated": mean(r.other_tokens_error[1] for r in reports),
            "activation_error_plain": mean(r.activation_error[0] for r in reports),
            "activation_error_rotated": mean(r.activation_error[1] for r in reports),
            "layers_helped": sum(r.other_tokens_error[1] < r.other_tokens_error[0] for r in reports) / n}


def by_module(reports: list[RotationLayerReport]) -> dict[str, dict[str, float]]:
    """:func:`summary` per module type (q_proj, v_proj, down_proj ...)."""
    groups: dict[str, list[RotationLayerReport]] = {}
    for report in reports:
        groups.setdefault(module_type(report.layer), []).append(report)
    return {name: summary(group) for name, group in groups.items()}
