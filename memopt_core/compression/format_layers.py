"""Linear layers that store a weight in a number format (:class:`FormatLinear`) or compute in a
randomized Hadamard basis (:class:`RotatedLinear`). Like :mod:`memopt_core.compression.layers`,
they hold no dense float weight: it is rebuilt from what they store at every forward, and every
byte they hold is a registered buffer, so stored bytes (and bits per weight) are exact.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memopt_core.compression.layer_base import DTYPES, KeepsStoredDtype, base_spec, copy_bias, dtype_name, empty_bias
from memopt_core.compression.walk import effective_weight
from memopt_core.config import QuantConfig
from memopt_core.primitives.formats.hadamard import rotate_input, unrotate_weight
from memopt_core.primitives.formats.registry import dequantize_format, quantize_format
from memopt_core.primitives.formats.stored import StoredWeight
from memopt_core.primitives.packing import pack_mask, packed_nbytes, unpack_mask


class FormatLinear(KeepsStoredDtype):
    """Linear layer holding a :class:`StoredWeight` (NF4, FP8, MXFP4, NVFP4, k-quants): one buffer
    per stored tensor (packed codes, scales, minimums, exactly as the format defines them), plus
    ``mask`` (packed bitmask of non-zeros) when pruned zeros would otherwise not decode to 0.
    Float buffers (fp32 absmaxes, fp16 ``d``, fp8 values) keep their dtype when the model is cast."""

    def __init__(self, in_features: int, out_features: int, fmt: str, meta: dict[str, Any],
                 layout: dict[str, tuple[tuple[int, ...], torch.dtype]], has_mask: bool = False,
                 bias: nn.Parameter | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.format, self.meta = fmt, dict(meta)
        self.weight_shape = (out_features, in_features)
        self.weight_dtype = dtype
        self.tensor_names = tuple(layout)
        for name, (shape, tensor_dtype) in layout.items():
            self.register_buffer(name, torch.zeros(shape, dtype=tensor_dtype))
        self._stored_dtype = tuple(name for name, (_, d) in layout.items() if d.is_floating_point)
        numel = out_features * in_features
        self.register_buffer("mask", torch.zeros(packed_nbytes(numel, 1), dtype=torch.uint8) if has_mask else None)
        self.bias = bias

    def _apply(self, fn, recurse=True):
        self.weight_dtype = fn(torch.empty(0, dtype=self.weight_dtype)).dtype  # what a float weight would become
        return super()._apply(fn, recurse)

    @classmethod
    def from_linear(cls, linear: nn.Module, cfg: QuantConfig, keep_zeros: bool = False) -> "FormatLinear":
        """Store ``linear``'s weight (nn.Linear or a compressed layer; not changed) in ``cfg.format``;
        ``keep_zeros`` (a pruned weight): a mask keeps its zeros exact where the format cannot."""
        w = effective_weight(linear).detach()  # [out, in]
        stored = quantize_format(w, cfg.format, double_quant=cfg.double_quant,
                                 per_channel=cfg.granularity == "per-channel")
        zeros = w == 0
        needs_mask = keep_zeros and bool(zeros.any()) and bool(dequantize_format(stored)[zeros].ne(0).any())
        layout = {name: (tuple(t.shape), t.dtype) for name, t in stored.tensors.items()}
        module = cls(w.shape[1], w.shape[0], stored.format, stored.meta, layout, needs_mask, copy_bias(linear), w.dtype)
        for name, tensor in stored.tensors.items():
            setattr(module, name, tensor.clone())
        module.mask = pack_mask(~zeros) if needs_mask else None
        return module

    def stored(self) -> StoredWeight:
        """The held tensors as a StoredWeight (shared, not copied)."""
        return StoredWeight(self.format, self.weight_shape, {n: getattr(self, n) for n in self.tensor_names}, self.meta)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight the layer computes with, ``[out, in]`` in ``dtype`` (default: the source dtype)."""
        w = dequantize_format(self.stored())
        if self.mask is not None:
            w = w.masked_fill(~unpack_mask(self.mask, w.numel()).view(self.weight_shape), 0.0)
        return w.to(dtype or self.weight_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def spec(self) -> dict:
        tensors = {n: [list(getattr(self, n).shape), dtype_name(getattr(self, n).dtype)] for n in self.tensor_names}
        return {**base_spec(self), "format": self.format, "meta": self.meta, "tensors": tensors,
                "mask": self.mask is not None, "dtype": dtype_name(self.weight_dtype)}

    @classmethod
    def empty_like_spec(cls, spec: dict) -> "FormatLinear":
        layout = {n: (tuple(shape), DTYPES[d]) for n, (shape, d) in spec["tensors"].items()}
        return cls(spec["in_features"], spec["out_features"], spec["format"], spec["meta"], layout, spec["mask"],
                   empty_bias(spec), DTYPES[spec["dtype"]])

    def extra_repr(self) -> str:
        layout = self.meta.get("layout", self.format)
        return (f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"
                + (f" (stored as {layout})" if layout != self.format else "") + f", mask={self.mask is not None}")


class RotatedLinear(nn.Module):
    """A compressed layer that computes in a randomized Hadamard basis: ``y = inner(Q^T x)`` where
    ``inner`` holds ``W Q`` compressed (``Q = D H``, :mod:`memopt_core.primitives.formats.hadamard`).

    Buffers: ``signs`` (the diagonal ``D``, a packed bitmask, 1 = +1, ``ceil(in/8)`` bytes) and the
    inner module's. ``dequantized_weight()`` is in the original basis (``W_rot Q^T``), so errors,
    histograms and sparsity compare with the original weight directly."""

    def __init__(self, inner: nn.Module, signs: torch.Tensor | None = None) -> None:
        """``inner``: a compressed layer (or a dense nn.Linear) holding the rotated weight ``W Q``;
        ``signs [in]`` of +-1 (None: a skeleton for ``load_state_dict``)."""
        super().__init__()
        self.in_features, self.out_features = inner.in_features, inner.out_features
        self.inner = inner
        packed = torch.zeros(packed_nbytes(self.in_features, 1), dtype=torch.uint8) if signs is None \
            else pack_mask(signs > 0)
        self.register_buffer("signs", packed)

    @property
    def bias(self) -> nn.Parameter | None:  # the inner module adds it: a bias is not rotated
        return self.inner.bias

    @property
    def weight_dtype(self) -> torch.dtype:
        return getattr(self.inner, "weight_dtype", None) or effective_weight(self.inner).dtype

    def sign_vector(self) -> torch.Tensor:
        """``D`` as float32 ``[in]`` of +-1."""
        return unpack_mask(self.signs, self.in_features).float().mul_(2).sub_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rotated = rotate_input(x.float(), self.sign_vector())  # float32: a bf16 Hadamard would add its own error
        return self.inner(rotated.to(x.dtype))

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The effective weight in the original basis, ``[out, in]`` in ``dtype`` (default: the source dtype)."""
        w = unrotate_weight(effective_weight(self.inner).float(), self.sign_vector())
        return w.to(dtype or self.weight_dtype)

    def spec(self) -> dict:
        bias = self.bias
        return {"class": type(self).__name__, "in_features": self.in_features, "out_features": self.out_features,
                "bias": bias is not None, "bias_dtype": dtype_name(bias.dtype) if bias is not None else None,
                "inner": self.inner.spec()}

    @classmethod
    def empty_like_spec(cls, spec: dict, inner: nn.Module) -> "RotatedLinear":
        """Skeleton around an already built ``inner`` skeleton (see ``layers.from_spec``)."""
        return cls(inner)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rotation=hadamard"
