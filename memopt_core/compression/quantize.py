"""Weight-only quantization walker: ``quantize_(model, cfg, names)`` swaps Linear layers in place.

Storage ``packed`` puts a :class:`~memopt_core.compression.layers.QuantLinear` (bit-packed codes +
fp16 scales) in place of each layer: the memory saving is real. Storage ``fake`` puts a plain
``nn.Linear`` holding the dequantized float weight: the quality is that of the quantized model but
the memory saving is only simulated (the reported bits per weight are those the packed form would
take). Methods ``fp16``/``bf16`` store the weight cast (:class:`~memopt_core.compression.layers.CastLinear`).
Source tensors are never written: the model may share them with a cached original.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from memopt_core.compression.layers import CastLinear, QuantLinear, copy_bias, dense_linear, weight_storage_bytes
from memopt_core.compression.walk import effective_weight, set_module
from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.quant import sqnr_db

_CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def store_quantized_(model: nn.Module, name: str, stored: nn.Module, source: nn.Module, cfg: QuantConfig) -> dict[str, Any]:
    """Put ``stored`` (a compressed module made from ``source``, the module now at ``name``) into
    ``model`` at ``name``; for storage 'fake' its dequantized dense twin instead. Returns the layer's
    info: stored weight bits per weight, SQNR against the source weight and whether it is simulated."""
    source_weight = effective_weight(source).detach()  # [out, in]
    bits = weight_storage_bytes(stored) * 8 / source_weight.numel()
    simulated = cfg.storage == "fake"
    if simulated:
        stored = dense_linear(stored.dequantized_weight(source_weight.dtype), copy_bias(source))
    set_module(model, name, stored)
    return {"bits": bits, "sqnr_db": sqnr_db(source_weight, effective_weight(stored)), "simulated": simulated}


def _compressed(module: nn.Module, cfg: QuantConfig) -> nn.Module:
    """The module that stores ``module``'s weight as ``cfg`` says (packed, before any 'fake')."""
    if cfg.is_cast:
        return CastLinear.from_linear(module, _CAST_DTYPES[cfg.method])
    return QuantLinear.from_linear(module, cfg)


def quantize_(model: nn.Module, cfg: QuantConfig, names: list[str]) -> dict[str, dict]:
    """Quantize the layers ``names`` of ``model`` (changed in place: the modules are replaced, their
    tensors are not touched). Each named module is an ``nn.Linear`` or a module of
    ``memopt_core.compression.layers`` (e.g. an already pruned one: its zeros stay zero).

    Returns ``{name: {'bits': stored weight bits per weight (codes + scales + zeros + mask),
    'sqnr_db': of the new effective weight against the source weight, 'simulated': True for
    storage 'fake' (dense floats held; the bits are those the packed form would take)}}``.
    """
    if cfg.method == "gptq":
        raise ConfigError("gptq needs calibration; use memopt_core.compression.calibrate")
    info: dict[str, dict] = {}
    for name in names:
        source = model.get_submodule(name)
        info[name] = store_quantized_(model, name, _compressed(source, cfg), source, cfg)
    return info
