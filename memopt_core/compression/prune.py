"""Pruning walker: zero weights of the target Linear layers of a model.

The model changed here may be a structural copy that shares tensors with a cached original,
so no existing tensor is ever written: each pruned layer gets a new ``nn.Parameter`` (or a new
module). Masked weights are still stored densely: pruning alone saves no memory.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from memopt_core.config import PruneConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.sparsity import global_magnitude_masks, l2_row_mask, nm_mask, unstructured_mask_from_scores
from memopt_core.compression.walk import effective_weight, set_module


def layer_mask(cfg: PruneConfig, weight: Tensor, scores: Tensor | None = None) -> Tensor:
    """Keep mask ``[out, in]`` (bool) for one layer's ``weight`` ``[out, in]`` under ``cfg``.

    Per-layer methods only (``magnitude``, ``l2-structured``, ``wanda`` with its ``scores``
    ``[out, in]``); ``magnitude-global`` needs all layers at once (see :func:`prune_`).
    Arguments are not changed.
    """
    if cfg.method == "l2-structured":
        return l2_row_mask(weight, cfg.ratio)
    if cfg.method == "magnitude":
        importance = weight.detach().abs()
    elif cfg.method == "wanda":
        if scores is None:
            raise ConfigError("wanda needs calibration statistics; pass its scores from memopt_core.compression.calibrate")
        importance = scores.to(weight.device)
    else:
        raise ConfigError(f"prune method {cfg.method!r} has no per-layer mask; choose 'magnitude', "
                          "'l2-structured' or 'wanda'")
    if cfg.pattern != "unstructured":
        return nm_mask(importance, cfg.n, cfg.m)
    # Wanda compares weights within each output row, where its input-norm factor is comparable.
    return unstructured_mask_from_scores(importance, cfg.ratio, per_row=cfg.method == "wanda")


def _check_request(cfg: PruneConfig, modules: dict[str, nn.Module], scores: dict[str, Tensor] | None) -> None:
    """Fail before any layer changes, so a bad request never leaves a half-pruned model."""
    if cfg.method == "sparsegpt":
        raise ConfigError("sparsegpt updates the remaining weights from calibration data; "
                          "run it through memopt_core.compression.calibrate, not prune_")
    if cfg.method == "wanda" and scores is None:
        raise ConfigError("wanda needs calibration statistics; collect its scores with memopt_core.compression.calibrate "
                          "and pass them as scores=")
    if scores is None:
        return
    if cfg.method != "wanda":
        raise ConfigError(f"scores are used by wanda only; got them for prune method {cfg.method!r}")
    for name, module in modules.items():
        shape = (module.out_features, module.in_features)
        if name not in scores:
            raise ConfigError(f"wanda scores are missing for layer {name!r}")
        if tuple(scores[name].shape) != shape:
            raise ConfigError(f"wanda scores for layer {name!r} have shape {tuple(scores[name].shape)}; "
                              f"the weight has {shape}")


def _masked_module(module: nn.Module, weight: Tensor, keep: Tensor) -> nn.Module | None:
    """Give ``module`` the weight ``weight * keep``; return a replacement module if one is needed.

    A plain ``nn.Linear`` gets a new Parameter. A compressed module (one with
    ``dequantized_weight()``) is asked for a masked twin via its ``masked(keep)`` method if it has
    one; otherwise it becomes a dense ``nn.Linear`` holding the masked dequantized weight, which
    gives up its compact storage (prune before quantizing to keep it).
    """
    if not callable(getattr(module, "dequantized_weight", None)):
        module.weight = nn.Parameter(weight * keep, requires_grad=module.weight.requires_grad)
        return None
    if callable(getattr(module, "masked", None)):
        return module.masked(keep)
    out_features, in_features = weight.shape
    bias = getattr(module, "bias", None)
    dense = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    dense.weight = nn.Parameter(weight * keep, requires_grad=False)
    if bias is not None:
        dense.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias, requires_grad=False)
    return dense


@torch.no_grad()
def prune_(model: nn.Module, cfg: PruneConfig, names: list[str],
           scores: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Prune the named Linear layers of ``model`` in place; return their keep masks (bool ``[out, in]``).

    ``names`` come from :func:`memopt_core.compression.walk.target_linears`. ``magnitude`` ranks ``|w|`` within
    each layer, ``magnitude-global`` over all named layers at once, ``l2-structured`` removes whole
    output rows; patterns ``2:4``/``4:8`` keep the N largest of every M inputs. ``wanda`` needs
    ``scores`` (name -> ``[out, in]`` importance from calibration); ``sparsegpt`` lives in
    ``memopt_core.compression.calibrate``. Weights are read through :func:`memopt_core.compression.walk.effective_weight`.

    ``model`` changes (modules get new Parameters or are replaced); no existing tensor is
    written, and a layer whose mask keeps everything is left as it is.
    """
    modules = {name: model.get_submodule(name) for name in names}
    _check_request(cfg, modules, scores)
    weights, masks = {}, {}
    if cfg.method == "magnitude-global":
        weights = {name: effective_weight(module).detach() for name, module in modules.items()}
        masks = global_magnitude_masks(weights, cfg.ratio)
    for name, module in modules.items():
        # Per-layer methods rebuild one (possibly dequantized) weight at a time.
        weight = weights[name] if name in weights else effective_weight(module).detach()
        if name not in masks:
            masks[name] = layer_mask(cfg, weight, None if scores is None else scores[name])
        if bool(masks[name].all()):
            continue
        replacement = _masked_module(module, weight, masks[name])
        if replacement is not None:
            set_module(model, name, replacement)
    return masks
