"""Reuse each compressed layer's dequantized weight for a while, where forwards are many and small.

A compressed layer rebuilds its weight from the stored codes on every forward (``layers.py``):
right for scoring windows (one big forward each), wrong for generation, which runs one forward per
new token on a single position. There, rebuilding every weight costs far more than the matmul:
24 tokens of SmolLM2 at 5 bits took 10 s that way, and 2 s with each weight rebuilt once.

Within :func:`dequantized_once` each layer's weight is rebuilt once per dtype and kept until the
block ends. The kept weights cost the dense model's memory, so they are kept only when that fits
in free memory with room to spare; otherwise forwards rebuild as before (same numbers, slower).
"""
from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from memopt_core.compression.layers import COMPRESSED_LINEARS

# Kept weights may take at most this share of free memory: generation itself and the page need the rest.
SHARE_OF_FREE_MEMORY = 0.5


def _dense_bytes(layers: list[nn.Module]) -> int:
    """What the kept weights would take: every layer dense in float32, the widest compute dtype."""
    return sum(4 * layer.in_features * layer.out_features for layer in layers)


@contextmanager
def dequantized_once(model: nn.Module, free_bytes: int) -> Iterator[bool]:
    """Within the block, each compressed layer of ``model`` dequantizes once per dtype.

    ``free_bytes``: free memory where the model lives (the caller asks the memory guard). Yields
    whether the weights are kept (False: not enough free memory, nothing changes). The layers'
    results are bit-identical either way: the kept tensor is the one a forward would build.
    """
    layers = [m for m in model.modules()
              if type(m).__name__ in COMPRESSED_LINEARS and "dequantized_weight" not in vars(m)]
    keep = bool(layers) and _dense_bytes(layers) <= SHARE_OF_FREE_MEMORY * free_bytes
    if keep:
        for layer in layers:  # an instance attribute shadows the class's method until deleted
            layer.dequantized_weight = functools.cache(layer.dequantized_weight)
    try:
        yield keep
    finally:
        if keep:
            for layer in layers:
                del layer.dequantized_weight
