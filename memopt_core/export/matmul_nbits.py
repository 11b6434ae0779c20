"""memopt's own codes and scales as ONNX Runtime ``com.microsoft.MatMulNBits`` tensors (exact, not re-derived).

MatMulNBits computes ``Y = A @ W^T`` with ``W [N, K]`` stored as blocks of ``block_size`` weights
along ``K`` (a power of two >= 16): ``B`` uint8 ``[N, k_blocks, block_size * bits / 8]`` (codes packed
low bits first within each byte), ``scales`` ``[N, k_blocks]`` in A's type, optional packed uint8
``zero_points`` ``[N, ceil(k_blocks * bits / 8)]`` (absent: ``2**(bits-1)``), and decodes
``(q - zero_point) * scale``. memopt's QuantLinear holds ``W [out=N, in=K]`` with groups along ``in``:

- symmetric codes decode ``(code - 2**(b-1)) * scale``: the operator's default zero point when
  ``b`` is the slot width, and a narrower grid sits inside the wider one (code + 2**(B-1) - 2**(b-1));
- integer zero points decode ``(code - zero) * scale``: written as packed uint8 zero points;
- a float minimum (``code * scale + min``) has no exact counterpart: refused (GGUF Q4_1 holds it).

A block must lie inside one of memopt's groups, so the block is the largest power of two dividing
the group (capped at :data:`MAX_BLOCK`); a group of several blocks repeats its scale. memopt's
fp16 scales become float32 (the graph computes in float32): exact, at 32 bits per block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from memopt_core.errors import ConfigError
from memopt_core.primitives.packing import pack_codes, unpack_codes
from memopt_core.primitives.quant import QuantizedWeight

SLOT_BITS = (4, 8)
MIN_BLOCK, MAX_BLOCK = 16, 128  # the operator's smallest block; the largest its CPU kernels are built for
DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class NBitsWeight:
    """The inputs and attributes of one MatMulNBits node (numpy, ready for ``onnx.numpy_helper``)."""

    packed: np.ndarray  # uint8 [N, k_blocks, block_size * bits / 8]
    scales: np.ndarray  # float32 [N, k_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks * bits / 8)], None: 2**(bits-1)
    K: int
    N: int
    bits: int
    block_size: int

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


def block_size_for(grid: QuantizedWeight, name: str = "layer") -> int:
    """The largest MatMulNBits block that lies inside every one of ``grid``'s groups (ConfigError if < 16)."""
    group = grid.shape[1] if grid.scale.numel() == 1 else min(grid.group_size, grid.shape[1])
    block = min(group & -group, MAX_BLOCK)  # largest power of two dividing the group
    if block < MIN_BLOCK:
        raise ConfigError(f"{name}: groups of {group} inputs hold no MatMulNBits block (a power of two >= {MIN_BLOCK} "
                          f"that divides the group); choose a group size such as 32, 64 or 128")
    return block


def check_grid(grid: QuantizedWeight, slot_bits: int, name: str = "layer") -> None:
    """One-line ConfigError for a grid MatMulNBits cannot hold exactly in ``slot_bits``-bit codes."""
    if grid.zero_kind == "float":
        raise ConfigError(f"{name}: a float minimum (code * scale + min) has no MatMulNBits counterpart, which decodes "
                          "(code - integer zero point) * scale; use --zero-point int, or export to gguf Q4_1")
    if grid.bits > slot_bits:
        raise ConfigError(f"{name}: {grid.bits}-bit codes do not fit {slot_bits}-bit MatMulNBits slots; choose "
                          f"--type int8-codes, or a setting of {slot_bits} bits or fewer")
    block_size_for(grid, name)


def slot_codes(grid: QuantizedWeight, slot_bits: int) -> tuple[np.ndarray, np.ndarray | None]:
    """memopt's codes ``[N, K]`` (and integer zeros ``[rows, groups]``) as ``slot_bits``-bit values.

    Symmetric: shifted so that the operator's default zero point ``2**(slot_bits-1)`` is memopt's
    offset ``2**(bits-1)``; integer zero: codes and zeros as they are (``q - zero`` unchanged)."""
    codes = grid.codes.numpy().astype(np.int16)
    if grid.zero_kind == "symmetric":
        return (codes + (1 << (slot_bits - 1)) - (1 << (grid.bits - 1))).astype(np.uint8), None
    return codes.astype(np.uint8), grid.zero.float().round().numpy().astype(np.uint8)


def per_block(values: np.ndarray, grid: QuantizedWeight, block: int) -> np.ndarray:
    """Per-group ``values [rows, groups]`` -> per-block ``[N, k_blocks]`` (a group's value repeated
    over its blocks; per-tensor's single row repeated over the N rows)."""
    n, k = grid.shape
    group = k if values.size == 1 else min(grid.group_size, k)
    group_of_block = np.arange(math.ceil(k / block)) * block // group  # [k_blocks]
    return np.broadcast_to(values[:, group_of_block], (n, group_of_block.size)).copy()


def pack_blocks(values: np.ndarray, bits: int, block: int) -> np.ndarray:
    """uint8 ``[N, K]`` values < 2**bits -> ``[N, k_blocks, block * bits / 8]``, the last block padded
    with zeros, ``8 / bits`` values a byte, the first in the low bits."""
    n, k = values.shape
    k_blocks = math.ceil(k / block)
    padded = np.zeros((n, k_blocks * block), dtype=np.uint8)
    padded[:, :k] = values
    return pack_bits(padded, bits).reshape(n, k_blocks, block * bits // 8)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 ``[rows, cols]`` -> ``[rows, ceil(cols * bits / 8)]``, low bits first, each row zero padded
    to whole bytes (memopt's own packing, ``primitives.packing``, one row after another)."""
    per_byte = 8 // bits
    rows, cols = values.shape
    padded = np.zeros((rows, math.ceil(cols / per_byte) * per_byte), dtype=np.uint8)
    padded[:, :cols] = values
    return pack_codes(torch.from_numpy(padded), bits).numpy().reshape(rows, -1)


def nbits_weight(grid: QuantizedWeight, slot_bits: int, name: str = "layer") -> NBitsWeight:
    """memopt's ``grid`` as MatMulNBits tensors with ``slot_bits``-bit codes (ConfigError when it cannot)."""
    check_grid(grid, slot_bits, name)
    block = block_size_for(grid, name)
    values, zeros = slot_codes(grid, slot_bits)
    scales = per_block(grid.scale.float().numpy(), grid, block).astype(np.float32)  # fp16 -> fp32: exact
    zero_points = None if zeros is None else pack_bits(per_block(zeros, grid, block), slot_bits)
    n, k = grid.shape
    return NBitsWeight(pack_blocks(values, slot_bits, block), scales, zero_points, k, n, slot_bits, block)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``[rows, bytes]`` -> uint8 ``[rows, count]``."""
    rows, width = packed.shape
    flat = unpack_codes(torch.from_numpy(np.ascontiguousarray(packed).reshape(-1)), bits, rows * width * 8 // bits)
    return flat.numpy().reshape(rows, -1)[:, :count]


def decode(weight: NBitsWeight) -> np.ndarray:
    """The operator's formula in numpy: ``W [N, K]`` float32 = ``(q - zero_point) * scale`` per block."""
    n, k_blocks, _ = weight.packed.shape
    q = unpack_bits(weight.packed.reshape(n, -1), weight.bits, k_blocks * weight.block_size)
    if weight.zero_points is None:
        zero = np.full((n, k_blocks), 1 << (weight.bits - 1), dtype=np.float32)
    else:
        zero = unpack_bits(weight.zero_points, weight.bits, k_blocks).astype(np.float32)
    blocks = q.reshape(n, k_blocks, weight.block_size).astype(np.float32)
    w = (blocks - zero[..., None]) * weight.scales[..., None]  # [N, k_blocks, block]
    return w.reshape(n, -1)[:, :weight.K]


def node(weight: NBitsWeight, a: str, names: tuple[str, str, str | None], output: str, node_name: str):
    """The MatMulNBits NodeProto computing ``output = a @ W^T``; ``names`` = (B, scales, zero_points)."""
    inputs = [a, names[0], names[1]] + ([names[2]] if weight.zero_points is not None else [])
    # accuracy_level 0: A stays float32 (1 would allow the same; 4 would quantize A to int8 blocks).
    return helper.make_node("MatMulNBits", inputs, [output], name=node_name, domain=DOMAIN, K=weight.K, N=weight.N,
                            bits=weight.bits, block_size=weight.block_size, accuracy_level=0)


def ort_dequantized(weight: NBitsWeight) -> np.ndarray:
    """``W^T [K, N]`` as ONNX Runtime's own MatMulNBits kernel decodes it: the node alone applied to
    the identity ``A = I [K, K]`` (an independent check of the bytes)."""
    inits = [helper.make_tensor("B", TensorProto.UINT8, weight.packed.shape, weight.packed.tobytes(), raw=True),
             helper.make_tensor("scales", TensorProto.FLOAT, weight.scales.shape, weight.scales.tobytes(), raw=True)]
    if weight.zero_points is not None:
        inits.append(helper.make_tensor("zp", TensorProto.UINT8, weight.zero_points.shape,
                                        weight.zero_points.tobytes(), raw=True))
    graph = helper.make_graph([node(weight, "A", ("B", "scales", "zp"), "Y", "nbits")], "dequantize",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [weight.K, weight.K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [weight.K, weight.N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["Y"], {"A": np.eye(weight.K, dtype=np.float32)})[0]
