"""Per-layer and overall sparsity, counted from the weights a model really computes with.

Counts come from :func:`memopt_core.compression.walk.effective_weight`, so quantized modules are counted on
their dequantized weight: a weight counts as pruned only if it is exactly zero there.
"""
from __future__ import annotations

import torch
from torch import nn

from memopt_core.compression.walk import effective_weight, layer_position
from memopt_core.primitives.sparsity import count_zeros


@torch.no_grad()
def layer_sparsity(model: nn.Module, names: list[str]) -> list[dict]:
    """One row per named layer, in the given order: ``name``, ``shape`` (``(out, in)``),
    ``sparsity`` (fraction of exact zeros), ``zeros``, ``numel``, ``block`` (index or None) and
    ``module_type`` (e.g. ``'self_attn.q_proj'``). ``model`` is not changed."""
    return [sparsity_row(name, effective_weight(model.get_submodule(name))) for name in names]


def sparsity_row(name: str, weight: torch.Tensor) -> dict:
    """The :func:`layer_sparsity` row of layer ``name`` whose effective weight is ``weight`` [out, in]."""
    zeros, numel = count_zeros(weight), weight.numel()
    block, module_type = layer_position(name)
    return {"name": name, "shape": tuple(weight.shape), "sparsity": zeros / numel if numel else 0.0,
            "zeros": zeros, "numel": numel, "block": block, "module_type": module_type}


def overall_sparsity(rows: list[dict]) -> float:
    """Zeros over weights of all ``rows`` from :func:`layer_sparsity` (weighted by size, not a
    mean of the per-layer ratios); 0.0 when there are no weights."""
    numel = sum(row["numel"] for row in rows)
    return sum(row["zeros"] for row in rows) / numel if numel else 0.0
