"""Write a compressed model as a compressed-tensors ``pack-quantized`` folder (vLLM, SGLang, transformers).

Per quantized Linear ``X`` the safetensors file holds ``X.weight_packed`` (int32 ``[out, in * bits / 32]``:
signed code + ``2**(bits-1)``, element ``c`` of a row at bits ``bits * (c % (32 / bits))`` of word
``c // (32 / bits)``), ``X.weight_scale`` (memopt's fp16 scales ``[out, groups]``), ``X.weight_shape``
and, for an integer zero point, ``X.weight_zero_point`` (signed, packed along the output rows).
The format dequantizes ``(q - zero) * scale`` with signed ``q``; memopt's unsigned codes are the same
numbers shifted by ``2**(bits-1)``, so the scales are exported as they are (memopt's int4 scale is
absmax/7, not the library's absmax/7.5: the library is never asked to re-derive them). Pruned
models are stored dense (zeros written); their sparsity is in the report.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
from safetensors.torch import save_file
from torch import nn

from memopt_core.compression.walk import linear_layers
from memopt_core.errors import ConfigError
from memopt_core.export.formats import CT_TYPES, FormatType
from memopt_core.export.layer_plan import REQUANTIZED, LayerPlan, auto_ct_type, ct_layer_plan, grid_of, requantized_grid
from memopt_core.primitives.quant import QuantizedWeight

FORMAT = "pack-quantized"


def _layer_group(module: nn.Module, group_size: int | None) -> int | None:
    """The group size to write: the one asked for, else the layer's own (None: one scale per row)."""
    if group_size is not None:
        return group_size
    grid = grid_of(module)
    if grid is None or grid.scale.numel() == 1 or grid.group_size >= module.in_features:
        return None
    return grid.group_size


def plan_compressed_tensors(model: nn.Module, requested: FormatType | None, group_size: int | None) -> list[LayerPlan]:
    """Each quantized Linear's type (``requested``, else the one holding its codes) and fate."""
    plans = []
    for name, module in linear_layers(model).items():
        ftype = requested if requested is not None and type(module) is not nn.Linear else auto_ct_type(module)
        if ftype is not None:
            plans.append(ct_layer_plan(name, module, ftype, _layer_group(module, group_size)))
    if not plans:
        raise ConfigError("compressed-tensors pack-quantized holds int4/int8 weights and this setting quantizes none; "
                          "give --bits 4 or 8 (or --type W4A16), or export to gguf or onnx")
    return plans


def signed_codes(grid: QuantizedWeight, bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """memopt's unsigned codes (and integer zeros) -> the format's signed int8 values at ``bits``.

    Symmetric: ``code - 2**(grid.bits-1)`` (narrower grids sit inside the wider one). Integer zero:
    ``code - 2**(bits-1)`` and ``zero - 2**(bits-1)``, so ``q - zero`` is unchanged."""
    if grid.zero_kind == "symmetric":
        return (grid.codes.to(torch.int16) - (1 << (grid.bits - 1))).to(torch.int8), None
    offset = 1 << (bits - 1)
    zero = grid.zero.float().round().to(torch.int16) - offset
    return (grid.codes.to(torch.int16) - offset).to(torch.int8), zero.to(torch.int8)


def layer_tensors(module: nn.Module, plan: LayerPlan, ftype: FormatType, group_size: int | None) -> dict[str, torch.Tensor]:
    """``weight_packed``, ``weight_scale``, ``weight_shape`` (+ ``weight_zero_point``, ``bias``) of one layer."""
    grid = grid_of(module)
    if plan.how == REQUANTIZED:
        grid = requantized_grid(module, ftype.quant_config(group_size))
    values, zero = signed_codes(grid, ftype.bits)
    tensors = {"weight_packed": pack_to_int32(values, ftype.bits),
               "weight_scale": grid.scale.clone().contiguous(),  # fp16 [out, groups], memopt's own
               "weight_shape": torch.tensor(list(grid.shape), dtype=torch.int64)}
    if zero is not None:
        tensors["weight_zero_point"] = pack_to_int32(zero, ftype.bits, packed_dim=0)
    if getattr(module, "bias", None) is not None:
        tensors["bias"] = module.bias.detach().clone()
    return tensors


def _scheme_key(ftype: FormatType, group_size: int | None) -> tuple:
    return ftype.name, group_size


def quantization_config(plans: list[LayerPlan], groups: dict[str, int | None], all_linears: list[str]) -> dict:
    """The ``quantization_config`` of config.json: one config group per (type, group size)."""
    members: dict[tuple, list[str]] = defaultdict(list)
    for plan in plans:
        members[_scheme_key(CT_TYPES[plan.target], groups[plan.name])].append(plan.name)
    ignore = [name for name in all_linears if name not in groups]
    config_groups = {}
    for index, ((type_name, group), names) in enumerate(members.items()):
        ftype = CT_TYPES[type_name]
        args = QuantizationArgs(num_bits=ftype.bits, type="int", symmetric=ftype.zero_kind == "symmetric",
                                strategy="group" if group else "channel", group_size=group, dynamic=False,
                                scale_dtype=torch.float16, zp_dtype=None if ftype.zero_kind == "symmetric" else torch.int8)
        targets = ["Linear"] if len(members) == 1 else names
        config_groups[f"group_{index}"] = QuantizationScheme(targets=targets, weights=args, format=FORMAT)
    config = QuantizationConfig(config_groups=config_groups, format=FORMAT, quantization_status="compressed",
                                ignore=ignore)
    return config.model_dump(exclude_none=False)


def write_compressed_tensors(model: nn.Module, tokenizer, folder: Path, plans: list[LayerPlan],
                             group_size: int | None) -> list[str]:
    """Write ``model`` (not changed) into ``folder``: config.json, tokenizer, model.safetensors."""
    linears = linear_layers(model)
    groups = {p.name: _layer_group(linears[p.name], group_size) for p in plans}
    state: dict[str, torch.Tensor] = {}
    for plan in plans:
        tensors = layer_tensors(linears[plan.name], plan, CT_TYPES[plan.target], groups[plan.name])
        state.update({f"{plan.name}.{key}": value for key, value in tensors.items()})
    quantized = set(groups)
    tied = getattr(model.config, "tie_word_embeddings", False)
    for key, value in model.state_dict().items():
        module_name = key.rsplit(".", 1)[0]
        if module_name in quantized or (tied and key == "lm_head.weight"):
            continue
        state[key] = value.detach().contiguous().clone()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    config["quantization_config"] = quantization_config(plans, groups, list(linears))
    config_path.write_text(json.dumps(config, indent=2, default=str))
    tokenizer.save_pretrained(folder)
    dense = sum(1 for p in plans if p.how == REQUANTIZED)
    return [f"{dense} layer(s) re-quantized to fit the format"] if dense else []
