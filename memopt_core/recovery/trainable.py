"""The training view of a compressed copy, and its export back to the same storage.

Each compressed Linear is swapped for a :class:`TrainableLinear` holding a float32 latent weight
(initialised to the weight the layer computes with) that computes with the weight its storage
would hold, so what trains is what will be stored:

- quantized (``QuantLinear``): the latent weight is rounded onto the layer's grid at every forward
  (``ste.fake_quantize``), with a straight-through estimator (the rounding passes the gradient as if it were the identity,
  zero outside the grid's range); the scales (and float minimums) train too, with the LSQ gradient
  that this gives, and are rounded to fp16 in the forward exactly as they will be stored;
- pruned (``SparseLinear``, or a dense ``nn.Linear`` holding pruned zeros): ``latent * keep``, so a
  pruned weight computes as zero and gets no gradient;
- cast (``CastLinear``): the latent weight rounded to fp16 / bf16 with a straight-through estimator.

:meth:`TrainableView.export_` rebuilds every layer in its original class with the same shapes,
codes drawn by the same rounding as the forward: the same bytes, and bit-identical outputs.
In a pruned model the zero pattern is frozen: zeros stay zero and a kept weight never rounds to
the zero code, so sparsity counted from the weights is unchanged by recovery.

Where the original is at hand, a quantized or cast layer's latent weight starts at the original's
float weight wherever that is stored as the same value (every weight of an RTN layer; those GPTQ
did not move), and at the stored value elsewhere, so training starts from the same function. Why:
a latent weight at the centre of its grid step must move half a step before any code changes,
which AdamW at 1e-4 takes dozens of steps to do; the original's weights sit all over their steps,
and those near a boundary flip with the first steps. Measured on SmolLM2 RTN W3 g64 (20 steps of
512 tokens, lr 1e-4): validation perplexity 232 -> 70 from the original, 232 -> 210 from the
stored values.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memopt_core.compression.layers import CastLinear, QuantLinear, SparseLinear, dense_linear
from memopt_core.compression.walk import effective_weight, set_module
from memopt_core.errors import ConfigError
from memopt_core.primitives.packing import pack_codes, pack_mask, unpack_mask
from memopt_core.recovery.ste import Grid, fake_quantize, grid_codes


def _exactly(value: Tensor, trained: Tensor) -> Tensor:
    """``value`` in the forward, the gradient of ``trained`` in the backward (straight through)."""
    return value + (trained - trained.detach())


class TrainableLinear(nn.Module):
    """A compressed Linear opened for training (see the module doc). ``weight``: float32 latent
    ``[out, in]``; ``keep``: bool ``[out, in]`` or None; ``scale`` (and ``zero`` for float
    minimums) trainable for quantized layers. ``source`` keeps the class and stored dtypes."""

    def __init__(self, source: nn.Module, keep: Tensor | None) -> None:
        super().__init__()
        self.source_class = type(source)
        self.in_features, self.out_features = source.in_features, source.out_features
        w = effective_weight(source).detach()  # [out, in]
        self.source_dtype = w.dtype
        self.weight = nn.Parameter(w.float().clone())
        bias = getattr(source, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone())
        self.bias_dtype = None if bias is None else bias.dtype
        self.register_buffer("keep", keep)
        self.grid: Grid | None = None
        if isinstance(source, QuantLinear):
            self._open_grid(source)
        self.cast_dtype = source.weight.dtype if isinstance(source, CastLinear) else None

    @torch.no_grad()
    def start_from_(self, original: Tensor) -> float:
        """Move the latent weight to ``original [out, in]`` (the uncompressed layer's weight) wherever
        that is stored as the same value; returns the fraction of weights moved. The forward is
        unchanged (see the module doc); only quantized and cast layers move."""
        original = original.detach().float()
        if self.grid is not None:
            stored = grid_codes(self.weight, self.scale, self.zero, self.grid, self.keep)[0]
            same = (grid_codes(original, self.scale, self.zero, self.grid, self.keep)[0] == stored)
            same = same.view_as(original)
        elif self.cast_dtype is not None:
            same = original.to(self.cast_dtype).float() == self.weight
        else:
            return 0.0
        self.weight.copy_(torch.where(same, original, self.weight))
        return same.float().mean().item()

    def _open_grid(self, source: QuantLinear) -> None:
        self.grid = Grid(source.bits, source.zero_kind, source.group_size)
        self.has_mask = source.mask is not None
        self.scale = nn.Parameter(source.scale.float().clone())
        zero = None if source.zero is None else source.zero.float().clone()
        if source.zero_kind == "float":
            self.zero = nn.Parameter(zero)
        else:  # an integer zero point stays on its integer
            self.register_buffer("zero", zero)

    def effective(self) -> Tensor:
        """The weight the exported layer will compute with, ``[out, in]`` float32, differentiable."""
        w = self.weight
        if self.grid is not None:
            w = fake_quantize(w, self.scale, self.zero, self.grid, self.keep)
        elif self.cast_dtype is not None:
            w = _exactly(w.detach().to(self.cast_dtype).float(), w)
        if self.keep is not None:
            w = torch.where(self.keep, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return w

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.effective().to(x.dtype), bias)

    @torch.no_grad()
    def export(self) -> nn.Module:
        """A new module of the source's class and shapes holding what this layer computes with."""
        bias = None if self.bias is None else nn.Parameter(self.bias.to(self.bias_dtype).clone(), requires_grad=False)
        if self.grid is not None:
            return self._export_quant(bias)
        w = self.effective()
        if self.source_class is CastLinear:
            module = CastLinear(self.in_features, self.out_features, self.cast_dtype, bias)
            module.weight = w.to(self.cast_dtype)
            return module
        if self.source_class is SparseLinear:
            keep = self.keep if self.keep is not None else w != 0
            module = SparseLinear(self.in_features, self.out_features, int(keep.sum()), self.source_dtype, bias)
            module.mask, module.values = pack_mask(keep), w[keep].to(self.source_dtype)
            return module
        return dense_linear(w.to(self.source_dtype), bias)

    def _export_quant(self, bias: nn.Parameter | None) -> QuantLinear:
        codes = grid_codes(self.weight, self.scale, self.zero, self.grid, self.keep)[0]
        codes = codes.reshape(self.out_features, self.in_features)
        module = QuantLinear(self.in_features, self.out_features, self.grid.bits, self.grid.group_size,
                             self.grid.zero_kind, tuple(self.scale.shape), self.has_mask, bias, self.source_dtype)
        module.packed = pack_codes(codes.to(torch.uint8), self.grid.bits)
        module.scale = self.scale.half()
        module.zero = None if self.zero is None else self.zero.half()
        module.mask = pack_mask(self.keep) if self.has_mask else None
        return module

    def extra_repr(self) -> str:
        kind = f"{self.grid.bits}-bit {self.grid.zero_kind}" if self.grid is not None else self.source_class.__name__
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}, keep={self.keep is not None}"


def _keep_mask(module: nn.Module, freeze_zeros: bool) -> Tensor | None:
    """Which weights may be non-zero: the stored bitmask, or every non-zero when zeros are frozen."""
    if isinstance(module, SparseLinear):
        return unpack_mask(module.mask, module.in_features * module.out_features).view(module.weight_shape)
    nonzero = (effective_weight(module) != 0) if freeze_zeros else None
    if isinstance(module, QuantLinear) and module.mask is not None:
        stored = unpack_mask(module.mask, module.in_features * module.out_features).view(module.weight_shape)
        return stored if nonzero is None else stored & nonzero
    return nonzero


def is_compressed(module: nn.Module, freeze_zeros: bool) -> bool:
    """A layer recovery can train: packed codes, a bitmask, a cast, or a dense Linear of a pruned run."""
    if isinstance(module, (QuantLinear, SparseLinear, CastLinear)):
        return True
    return freeze_zeros and isinstance(module, nn.Linear) and bool((module.weight == 0).any())


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the architectures' own norm classes (by name: no table per model)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


@dataclass
class TrainableView:
    """The layers of ``model`` opened for training. ``model`` is changed in place: compressed
    layers are replaced by :class:`TrainableLinear`, trained norms get new Parameters (the
    originals they shared with another model are never written)."""

    model: nn.Module
    layers: dict[str, TrainableLinear]
    norms: dict[str, nn.Parameter] = field(default_factory=dict)

    def named_parameters(self) -> dict[str, nn.Parameter]:
        params = {f"{name}.{p}": t for name, layer in self.layers.items() for p, t in layer.named_parameters()}
        return {**params, **self.norms}

    def parameter_groups(self, lr: float, scale_lr_factor: float) -> list[dict]:
        """AdamW groups: latent weights, biases and norms at ``lr``; scales and minimums at
        ``lr * scale_lr_factor``."""
        scales = [p for n, p in self.named_parameters().items() if n.endswith((".scale", ".zero"))]
        others = [p for n, p in self.named_parameters().items() if not n.endswith((".scale", ".zero"))]
        groups = [{"params": others, "lr": lr}]
        if scales:
            groups.append({"params": scales, "lr": lr * scale_lr_factor})
        return groups

    def state(self) -> dict[str, Tensor]:
        """A copy of every trained tensor (a checkpoint)."""
        return {name: p.detach().clone() for name, p in self.named_parameters().items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, Tensor]) -> None:
        """Restore a checkpoint from :meth:`state` (in place)."""
        for name, p in self.named_parameters().items():
            p.copy_(state[name])

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.named_parameters().values())

    @torch.no_grad()
    def export_(self) -> None:
        """Put every layer back in its storage class (in place); nothing requires grad afterwards."""
        for name, layer in self.layers.items():
            set_module(self.model, name, layer.export())
        for param in self.norms.values():
            param.requires_grad_(False)
        self.layers = {}


def open_for_training_(model: nn.Module, names: list[str], freeze_zeros: bool, train_norms: bool,
                       only: tuple[str, ...] = (), original: nn.Module | None = None) -> TrainableView:
    """Open the compressed layers among ``names`` of ``model`` (changed in place) for training.

    ``freeze_zeros``: the run pruned, so every zero stays zero and no new zero appears.
    ``only``: fnmatch patterns; when given, only matching compressed layers train (the others
    stay as they are stored). ``train_norms``: LayerNorm / RMSNorm weights train too.
    ``original``: the uncompressed model (same layer names, only read); quantized and cast
    layers' latent weights start from its weights (:meth:`TrainableLinear.start_from_`).
    Raises ConfigError when no compressed layer is selected."""
    chosen = [n for n in names if is_compressed(model.get_submodule(n), freeze_zeros)]
    if only:
        chosen = [n for n in chosen if any(fnmatch.fnmatchcase(n, p) for p in only)]
    if not chosen:
        what = "the given patterns select none of them" if only else "the model has none"
        raise ConfigError(f"nothing to recover: recovery trains compressed layers, and {what}")
    layers = {}
    for name in chosen:
        module = model.get_submodule(name)
        layers[name] = TrainableLinear(module, _keep_mask(module, freeze_zeros))
        if original is not None:
            layers[name].start_from_(effective_weight(original.get_submodule(name)))
        set_module(model, name, layers[name])
    norms = _open_norms(model) if train_norms else {}
    return TrainableView(model=model, layers=layers, norms=norms)


def _open_norms(model: nn.Module) -> dict[str, nn.Parameter]:
    """Give every norm's weight and bias a new trainable Parameter (the shared ones stay untouched)."""
    opened = {}
    for name, module in model.named_modules():
        if not is_norm(module):
            continue
        for pname, param in list(module.named_parameters(recurse=False)):
            fresh = nn.Parameter(param.detach().clone(), requires_grad=True)
            setattr(module, pname, fresh)
            opened[f"{name}.{pname}"] = fresh
    return opened
