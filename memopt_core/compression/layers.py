"""Modules that really store compressed weights, so the memory saving is real.

Each replaces an ``nn.Linear``: it has ``in_features``, ``out_features``, ``bias`` (Parameter or
None), ``dequantized_weight() -> [out, in]`` and ``forward(x) = F.linear(x, W.to(x.dtype), bias)``.
No module keeps a dense float copy of its weight: the weight is rebuilt at every forward.
Everything held is a registered parameter or buffer, so ``state_dict()`` is complete; ``spec()``
(JSON) and :func:`from_spec` build an empty skeleton that ``load_state_dict`` then fills.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memopt_core.compression.walk import effective_weight
from memopt_core.config import QuantConfig
from memopt_core.primitives.packing import pack_codes, pack_mask, packed_nbytes, unpack_codes, unpack_mask
from memopt_core.primitives.quant import QuantizedWeight, dequantize, dequantize_codes, quantize_weight

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def copy_bias(linear: nn.Module) -> nn.Parameter | None:
    """A copy of ``linear``'s bias as a new Parameter (None without one); ``linear`` is not changed."""
    bias = getattr(linear, "bias", None)
    if bias is None:
        return None
    return nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)


def dense_linear(weight: torch.Tensor, bias: nn.Parameter | None) -> nn.Linear:
    """A new ``nn.Linear`` holding ``weight`` ``[out, in]`` (not copied) and ``bias``.

    Built on the meta device, so no random initialisation is paid for, then given the tensors."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.bias = bias
    return layer


def _empty_bias(spec: dict) -> nn.Parameter | None:
    if not spec.get("bias"):
        return None
    return nn.Parameter(torch.empty(spec["out_features"], dtype=_DTYPES[spec["bias_dtype"]]), requires_grad=False)


def _base_spec(module: nn.Module) -> dict:
    bias = module.bias
    return {"class": type(module).__name__, "in_features": module.in_features,
            "out_features": module.out_features, "bias": bias is not None,
            "bias_dtype": _dtype_name(bias.dtype) if bias is not None else None}


class _KeepsStoredDtype(nn.Module):
    """Buffers named in ``_stored_dtype`` keep their 16-bit float dtype through ``model.to(dtype)``,
    ``.half()`` or ``.float()``: only device moves reach them. A cast of fp16 scales to bf16 would
    silently lose precision, and one to fp32 would undo the memory saving."""

    _stored_dtype: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        held = {name: self._buffers[name].dtype for name in self._stored_dtype if self._buffers.get(name) is not None}
        for name in held:  # dtype conversions only touch floating tensors: hide these as int16
            self._buffers[name] = self._buffers[name].view(torch.int16)
        try:
            return super()._apply(fn, recurse)
        finally:
            for name, dtype in held.items():
                self._buffers[name] = self._buffers[name].view(dtype)


class QuantLinear(_KeepsStoredDtype):
    """Linear layer holding bit-packed integer codes with fp16 scales (and zeros when asymmetric).

    Buffers: ``packed`` uint8 ``[ceil(out*in*bits/8)]``; ``scale`` fp16 ``[rows, n_groups]``
    (``rows = out``, or 1 per-tensor); ``zero`` like ``scale`` for zero kinds 'int'/'float';
    ``mask`` (packed bitmask of non-zeros) only when pruned zeros would otherwise not decode to 0.
    ``scale`` and ``zero`` stay fp16 when the model is cast; ``weight_dtype`` (what
    :meth:`dequantized_weight` returns by default) follows the cast.
    """

    _stored_dtype = ("scale", "zero")

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, zero_kind: str,
                 scale_shape: tuple[int, int], has_mask: bool = False, bias: nn.Parameter | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.zero_kind = bits, group_size, zero_kind
        self.weight_shape = (out_features, in_features)
        self.weight_dtype = dtype  # of the source weight: what dequantized_weight() returns by default
        numel = out_features * in_features
        self.register_buffer("packed", torch.zeros(packed_nbytes(numel, bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.zeros(scale_shape, dtype=torch.float16))
        zero = torch.zeros(scale_shape, dtype=torch.float16) if zero_kind != "symmetric" else None
        self.register_buffer("zero", zero)
        self.register_buffer("mask", torch.zeros(packed_nbytes(numel, 1), dtype=torch.uint8) if has_mask else None)
        self.bias = bias

    def _apply(self, fn, recurse=True):
        # Ask the conversion what it does to a float tensor of the source dtype (an empty probe).
        self.weight_dtype = fn(torch.empty(0, dtype=self.weight_dtype)).dtype
        return super()._apply(fn, recurse)

    @classmethod
    def from_linear(cls, linear: nn.Module, cfg: QuantConfig) -> "QuantLinear":
        """Quantize ``linear`` (nn.Linear or a module of this file; not changed) into a new QuantLinear;
        its zero weights (pruned ones) stay exactly zero."""
        w = effective_weight(linear).detach()  # [out, in]
        return cls.from_quantized(quantize_weight(w, cfg), copy_bias(linear), w.dtype, keep=w != 0)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: nn.Parameter | None, dtype: torch.dtype,
                       keep: torch.Tensor | None = None) -> "QuantLinear":
        """A new QuantLinear holding ``qw`` (codes ``[out, in]``, copied) and ``bias``; ``dtype`` is the
        source weight's. ``keep`` (bool ``[out, in]``) marks the weights that are not pruned: a mask is
        stored only when pruned positions would not decode to exactly 0 (a float-minimum grid)."""
        out_f, in_f = qw.shape
        needs_mask = keep is not None and not bool(keep.all()) and bool(dequantize(qw)[~keep].ne(0).any())
        module = cls(in_f, out_f, qw.bits, qw.group_size, qw.zero_kind, tuple(qw.scale.shape), needs_mask, bias, dtype)
        module.packed = pack_codes(qw.codes, qw.bits)
        module.scale = qw.scale.clone()
        module.zero = None if qw.zero is None else qw.zero.clone()
        module.mask = pack_mask(keep) if needs_mask else None
        return module

    def codes(self) -> torch.Tensor:
        """Unpacked codes, uint8 ``[out, in]`` (a new tensor)."""
        return unpack_codes(self.packed, self.bits, self.out_features * self.in_features).view(self.weight_shape)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the layer computes with, ``[out, in]`` in ``dtype`` (default: the source dtype)."""
        w = dequantize_codes(self.codes(), self.scale, self.zero, self.bits, self.group_size, self.zero_kind)
        if self.mask is not None:
            keep = unpack_mask(self.mask, w.numel()).view(self.weight_shape)
            w = w.masked_fill(~keep, 0.0)
        return w.to(dtype or self.weight_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def spec(self) -> dict:
        """JSON-serialisable description from which :meth:`empty_like_spec` rebuilds the skeleton."""
        return {**_base_spec(self), "bits": self.bits, "group_size": self.group_size, "zero_kind": self.zero_kind,
                "scale_shape": list(self.scale.shape), "mask": self.mask is not None,
                "dtype": _dtype_name(self.weight_dtype)}

    @classmethod
    def empty_like_spec(cls, spec: dict) -> "QuantLinear":
        """Skeleton with zero-filled buffers of the right shapes; fill it with ``load_state_dict``."""
        return cls(spec["in_features"], spec["out_features"], spec["bits"], spec["group_size"], spec["zero_kind"],
                   tuple(spec["scale_shape"]), spec["mask"], _empty_bias(spec), _DTYPES[spec["dtype"]])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, zero_kind={self.zero_kind}, mask={self.mask is not None}, "
                f"bias={self.bias is not None}")


class SparseLinear(nn.Module):
    """Linear layer holding a packed bitmask of its non-zeros and their values (source dtype).

    Buffers: ``mask`` uint8 ``[ceil(out*in/8)]``, ``values`` ``[nnz]`` in row-major order."""

    def __init__(self, in_features: int, out_features: int, nnz: int, dtype: torch.dtype = torch.float32,
                 bias: nn.Parameter | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_shape = (out_features, in_features)
        self.register_buffer("mask", torch.zeros(packed_nbytes(in_features * out_features, 1), dtype=torch.uint8))
        self.register_buffer("values", torch.zeros(nnz, dtype=dtype))
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Module) -> "SparseLinear":
        """Store the non-zeros of ``linear``'s weight (``linear`` is not changed)."""
        w = effective_weight(linear).detach()  # [out, in]
        keep = w != 0
        module = cls(w.shape[1], w.shape[0], int(keep.sum()), w.dtype, copy_bias(linear))
        module.mask = pack_mask(keep)
        module.values = w[keep].clone()
        return module

    @staticmethod
    def is_smaller(weight: torch.Tensor) -> bool:
        """Whether bitmask + non-zero values take fewer bytes than the dense ``weight``."""
        nnz = int(weight.count_nonzero())
        return packed_nbytes(weight.numel(), 1) + nnz * weight.element_size() < weight.numel() * weight.element_size()

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Dense ``[out, in]`` weight in ``dtype`` (default: the stored dtype); a new tensor."""
        numel = self.in_features * self.out_features
        w = self.values.new_zeros(numel)
        w[unpack_mask(self.mask, numel)] = self.values
        return w.view(self.weight_shape).to(dtype or self.values.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def spec(self) -> dict:
        return {**_base_spec(self), "nnz": self.values.numel(), "dtype": _dtype_name(self.values.dtype)}

    @classmethod
    def empty_like_spec(cls, spec: dict) -> "SparseLinear":
        return cls(spec["in_features"], spec["out_features"], spec["nnz"], _DTYPES[spec["dtype"]], _empty_bias(spec))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.values.numel()}"


class CastLinear(_KeepsStoredDtype):
    """Linear layer holding its weight (a buffer) cast to fp16 or bf16; forward casts it to the
    input dtype. The weight keeps its dtype when the model is cast."""

    _stored_dtype = ("weight",)

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.float16,
                 bias: nn.Parameter | None = None) -> None:
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"cast dtype {dtype} is not supported; choose torch.float16 or torch.bfloat16")
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=dtype))
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: nn.Module, dtype: torch.dtype = torch.float16) -> "CastLinear":
        """Cast ``linear``'s weight into a new tensor (``linear`` is not changed)."""
        w = effective_weight(linear).detach()  # [out, in]
        module = cls(w.shape[1], w.shape[0], dtype, copy_bias(linear))
        # .to() returns the same tensor when the dtype already matches: clone so nothing is shared.
        module.weight = w.to(dtype).clone()
        return module

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The stored ``[out, in]`` weight, cast to ``dtype`` when given."""
        return self.weight if dtype is None else self.weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    def spec(self) -> dict:
        return {**_base_spec(self), "dtype": _dtype_name(self.weight.dtype)}

    @classmethod
    def empty_like_spec(cls, spec: dict) -> "CastLinear":
        return cls(spec["in_features"], spec["out_features"], _DTYPES[spec["dtype"]], _empty_bias(spec))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.weight.dtype}"


COMPRESSED_LINEARS = {cls.__name__: cls for cls in (QuantLinear, SparseLinear, CastLinear)}


def from_spec(spec: dict) -> nn.Module:
    """Empty skeleton for a ``spec()`` dict (fill it with ``load_state_dict``)."""
    kind = COMPRESSED_LINEARS.get(spec.get("class"))
    if kind is None:
        raise ValueError(f"module class {spec.get('class')!r} is not supported; choose {', '.join(COMPRESSED_LINEARS)}")
    return kind.empty_like_spec(spec)


def _unique_bytes(tensors) -> int:
    """Bytes of the memory the tensors cover, each byte counted once (tied, shared or overlapping
    views). Byte ranges rather than whole storages: a loaded weight may be a view of a larger file."""
    spans: dict[object, list[tuple[int, int]]] = {}
    loose = 0
    for t in tensors:
        if t.numel() == 0:
            continue
        start = t.data_ptr()
        if start == 0:  # meta tensors have no address
            loose += t.numel() * t.element_size()
            continue
        extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
        spans.setdefault(t.device, []).append((start, start + extent * t.element_size()))
    total = loose
    for ranges in spans.values():
        end = None
        for lo, hi in sorted(ranges):
            if end is None or lo >= end:
                total += hi - lo
                end = hi
            elif hi > end:
                total += hi - end
                end = hi
    return total


def _named_tensors(module: nn.Module):
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def module_storage_bytes(module: nn.Module) -> int:
    """Bytes of every unique tensor (parameters and buffers, recursively) a module holds."""
    return _unique_bytes(t for _, t in _named_tensors(module))


def weight_storage_bytes(module: nn.Module) -> int:
    """Bytes of the weight-related tensors only (codes, scales, zeros, masks, values or the float
    weight); biases are excluded."""
    return _unique_bytes(t for name, t in _named_tensors(module) if name.rpartition(".")[2] != "bias")
