"""What every compressed Linear shares: its spec fields, its bias, and stored dtypes that a model
cast must not touch."""
from __future__ import annotations

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2, "uint8": torch.uint8,
          "int8": torch.int8}
# Integer dtypes of each element size: a float buffer viewed as one of these is invisible to dtype casts.
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def copy_bias(linear: nn.Module) -> nn.Parameter | None:
    """A copy of ``linear``'s bias (None without one); ``linear`` is not changed."""
    bias = getattr(linear, "bias", None)
    if bias is None:
        return None
    return nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)


def empty_bias(spec: dict) -> nn.Parameter | None:
    if not spec.get("bias"):
        return None
    return nn.Parameter(torch.empty(spec["out_features"], dtype=DTYPES[spec["bias_dtype"]]), requires_grad=False)


def base_spec(module: nn.Module) -> dict:
    bias = module.bias
    return {"class": type(module).__name__, "in_features": module.in_features,
            "out_features": module.out_features, "bias": bias is not None,
            "bias_dtype": dtype_name(bias.dtype) if bias is not None else None}


class KeepsStoredDtype(nn.Module):
    """Buffers named in ``_stored_dtype`` keep their float dtype (fp16 scales, fp32 absmaxes, fp8
    values) through ``model.to(dtype)``, ``.half()`` or ``.float()``: only device moves reach them.
    A cast of fp16 scales to bf16 would silently lose precision, and one to fp32 would undo the
    memory saving."""

    _stored_dtype: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        held = {name: self._buffers[name].dtype for name in self._stored_dtype if self._buffers.get(name) is not None}
        for name, dtype in held.items():  # dtype conversions only touch floating tensors: hide these as integers
            self._buffers[name] = self._buffers[name].view(_INT_OF_SIZE[dtype.itemsize])
        try:
            return super()._apply(fn, recurse)
        finally:
            for name, dtype in held.items():
                self._buffers[name] = self._buffers[name].view(dtype)
