"""Pruning walker: zero weights of the target Linear layers of a model.

The model changed here may be a structural copy that shares tensors with a cached original,
so no existing tensor is ever written: each pruned layer gets a new ``nn.Parameter`` (or a new
module). Masked weights are still stored densely: pruning alone saves no memory.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from memopt_core.compression.layers import dense_linear
from memopt_core.compression.walk import effective_weight, set_module
from memopt_core.config import PruneConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.sparsity import global_magnitude_masks, l2_row_mask, magnitude_mask, nm_mask
from memopt_core.primitives.wanda import wanda_mask


def layer_mask(cfg: PruneConfig, weight: Tensor, input_sq_norms: Tensor | None = None) -> Tensor:
    """Keep mask ``[out, in]`` (bool) for one layer's ``weight`` ``[out, in]`` under ``cfg``.

    Per-layer methods only (``magnitude``, ``l2-structured``, ``wanda`` with its calibration
    ``input_sq_norms`` ``[in]``); ``magnitude-global`` needs all layers at once (see :func:`prune_`).
    Arguments are not changed.
    """
    if cfg.method == "l2-structured":
        return l2_row_mask(weight, cfg.ratio)
    if cfg.method == "wanda":
        if input_sq_norms is None:
            raise ConfigError("wanda needs calibration statistics; pass its input norms from memopt_core.compression.calibrate")
        return wanda_mask(weight, input_sq_norms.to(weight.device), cfg.ratio, cfg.n, cfg.m)
    if cfg.method != "magnitude":
        raise ConfigError(f"prune method {cfg.method!r} has no per-layer mask; choose 'magnitude', "
                          "'l2-structured' or 'wanda'")
    if cfg.pattern != "unstructured":
        return nm_mask(weight.detach().abs(), cfg.n, cfg.m)
    return magnitude_mask(weight, cfg.ratio)


def _check_request(cfg: PruneConfig, modules: dict[str, nn.Module], norms: dict[str, Tensor] | None) -> None:
    """Fail before any layer changes, so a bad request never leaves a half-pruned model."""
    if cfg.method == "sparsegpt":
        raise ConfigError("sparsegpt updates the remaining weights from calibration data; "
                          "run it through memopt_core.compression.calibrate, not prune_")
    if cfg.method == "wanda" and norms is None:
        raise ConfigError("wanda needs calibration statistics; collect its input norms with "
                          "memopt_core.compression.calibrate and pass them as input_sq_norms=")
    if norms is None:
        return
    if cfg.method != "wanda":
        raise ConfigError(f"input norms are used by wanda only; got them for prune method {cfg.method!r}")
    for name, module in modules.items():
        if name not in norms:
            raise ConfigError(f"wanda input norms are missing for layer {name!r}")
        if tuple(norms[name].shape) != (module.in_features,):
            raise ConfigError(f"wanda input norms for layer {name!r} have shape {tuple(norms[name].shape)}; "
                              f"the layer has {module.in_features} inputs")


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
    bias = getattr(module, "bias", None)  # shared, not copied: pruning never changes it
    if bias is not None and not isinstance(bias, nn.Parameter):
        bias = nn.Parameter(bias, requires_grad=False)
    return dense_linear(weight * keep, bias)


@torch.no_grad()
def prune_(model: nn.Module, cfg: PruneConfig, names: list[str],
           input_sq_norms: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Prune the named Linear layers of ``model`` in place; return their keep masks (bool ``[out, in]``).

    ``names`` come from :func:`memopt_core.compression.walk.target_linears`. ``magnitude`` ranks ``|w|`` within
    each layer, ``magnitude-global`` over all named layers at once, ``l2-structured`` removes whole
    output rows; patterns ``2:4``/``4:8`` keep the N largest of every M inputs. ``wanda`` needs
    ``input_sq_norms`` (name -> ``[in]``, each input's squared norm over calibration tokens);
    ``sparsegpt`` lives in
    ``memopt_core.compression.calibrate``. Weights are read through :func:`memopt_core.compression.walk.effective_weight`.

    ``model`` changes (modules get new Parameters or are replaced); no existing tensor is
    written, and a layer whose mask keeps everything is left as it is.
    """
    modules = {name: model.get_submodule(name) for name in names}
    _check_request(cfg, modules, input_sq_norms)
    weights, masks = {}, {}
    if cfg.method == "magnitude-global":
        weights = {name: effective_weight(module).detach() for name, module in modules.items()}
        masks = global_magnitude_masks(weights, cfg.ratio)
    for name, module in modules.items():
        # Per-layer methods rebuild one (possibly dequantized) weight at a time.
        weight = weights[name] if name in weights else effective_weight(module).detach()
        if name not in masks:
            masks[name] = layer_mask(cfg, weight, None if input_sq_norms is None else input_sq_norms[name])
        if bool(masks[name].all()):
            continue
        replacement = _masked_module(module, weight, masks[name])
        if replacement is not None:
            set_module(model, name, replacement)
    return masks
