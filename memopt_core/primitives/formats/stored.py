"""What a format stores for one weight, and the block helpers the formats share (pure tensor functions).

A :class:`StoredWeight` is exactly the tensors a layer holds for a weight ``[out, in]`` in some
number format (packed codes, scales, minimums ...) plus JSON-serialisable facts about the layout.
Its bytes are the stored bytes: bits per weight computed from it count every scale byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StoredWeight:
    """``tensors``: name -> tensor exactly as stored; ``meta``: JSON facts (block sizes, the type a
    k-quant fell back to ...); ``shape``: the weight's ``(out, in)``."""

    format: str
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.numel


def flat_blocks(w: torch.Tensor, block: int) -> torch.Tensor:
    """``w`` (any shape) flattened in row-major order and cut into blocks ``[n_blocks, block]``
    float32; a ragged last block is padded with zeros (they change no absmax). A new tensor."""
    flat = w.detach().float().reshape(-1)
    n_blocks = math.ceil(flat.numel() / block)
    pad = n_blocks * block - flat.numel()
    if pad:
        flat = torch.cat((flat, flat.new_zeros(pad)))
    return flat.reshape(n_blocks, block)


def unflatten(blocks: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`flat_blocks`: drop the padding, reshape to ``shape``."""
    return blocks.reshape(-1)[:shape[0] * shape[1]].reshape(shape)


def safe_divisor(scale: torch.Tensor) -> torch.Tensor:
    """A zero scale (an all-zero block) divides by 1 instead: its codes then decode to 0."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def nearest_index(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Index (int64, shape of ``values``) of the nearest entry of the ascending ``table``; a value
    exactly half-way between two entries takes the lower one."""
    mid = (table[1:] + table[:-1]) / 2
    return torch.searchsorted(mid, values.contiguous(), side="left")
