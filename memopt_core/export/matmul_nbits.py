"""memopt's own codes and scales as ONNX Runtime ``com.microsoft.MatMulNBits`` inputs (exact, not re-derived).

MatMulNBits computes ``Y = A @ W^T`` with ``W [N, K]`` stored as blocks of ``block_size`` weights
along ``K`` (a power of two >= 16): ``B`` uint8 ``[N, k_blocks, block_size * bits / 8]`` (codes packed
low bits first within each byte), ``scales`` ``[N, k_blocks]`` in A's type, optional ``zero_points``
(packed uint8 ``[N, ceil(k_blocks * bits / 8)]``, or ``[N, k_blocks]`` in A's type; absent:
``2**(bits-1)``), and decodes ``(q - zero_point) * scale``. memopt's QuantLinear holds ``W [out=N, in=K]``
with groups along ``in``:

- symmetric codes decode ``(code - 2**(b-1)) * scale``: the operator's default zero point when
  ``b`` is the slot width, and a narrower grid sits inside the wider one (code + 2**(B-1) - 2**(b-1));
- integer zero points decode ``(code - zero) * scale``: written as uint8 zero points;
- a float minimum (``code * scale + min``) has no exact counterpart: refused (GGUF Q4_1 holds it).

A block must lie inside one of memopt's groups, so the block is the largest power of two dividing
the group (capped at :data:`MAX_BLOCK`). The file stores memopt's scales as they are, fp16
``[rows, groups]``; a few graph nodes turn them into what the operator takes (:func:`graph_parts`):
``Cast`` to float32 (exact), then, where a group spans several blocks, ``Gather`` of each block's
group and ``Expand`` of a per-tensor row. ONNX Runtime folds these constant nodes into initializers
when it builds the session (basic graph optimizations), so the kernel sees the same float32 inputs
as if they had been written out, at the file size of memopt's own scales.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from memopt_core.errors import ConfigError
from memopt_core.primitives.packing import pack_codes, unpack_codes
from memopt_core.primitives.quant import QuantizedWeight

SLOT_BITS = (4, 8)
MIN_BLOCK, MAX_BLOCK = 16, 128  # the operator's smallest block; the largest its CPU kernels are built for
DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class NBitsWeight:
    """One Linear's MatMulNBits tensors as the file stores them (numpy, ready for ``onnx.numpy_helper``).

    ``scales`` are memopt's own, fp16 ``[rows, groups]`` (``rows`` = N, or 1 per tensor). Zero points are
    uint8 integers: at 8 bits memopt's ``[rows, groups]``, a byte each, widened in the graph like the
    scales; at 4 bits packed as the operator takes them, one a block (``[N, ceil(k_blocks / 2)]``),
    because float zero points (the only ones a Gather could widen) send ONNX Runtime to its slower
    de-quantize-then-SGEMM path instead of its 4-bit kernel."""

    packed: np.ndarray  # uint8 [N, k_blocks, block_size * bits / 8]
    scales: np.ndarray  # float16 [rows, groups], memopt's scale buffer
    zero_points: np.ndarray | None  # uint8, see above; None: 2**(bits-1)
    K: int
    N: int
    bits: int
    block_size: int
    group_size: int  # inputs a scale covers: memopt's group, or K per channel / per tensor

    @property
    def k_blocks(self) -> int:
        return self.packed.shape[1]

    @property
    def group_of_block(self) -> np.ndarray:
        """int64 ``[k_blocks]``: the column of ``scales`` each block reads."""
        return np.arange(self.k_blocks, dtype=np.int64) * self.block_size // self.group_size

    @property
    def widened(self) -> bool:
        """Whether the graph must widen ``scales`` (a group spanning blocks, or one row per tensor)."""
        return self.scales.shape != (self.N, self.k_blocks)

    @property
    def zeros_per_group(self) -> bool:
        """Whether ``zero_points`` is memopt's ``[rows, groups]`` (widened in the graph), not packed per block."""
        return self.widened and self.bits == 8

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


def per_block(values: np.ndarray, weight: NBitsWeight) -> np.ndarray:
    """Per-group ``values [rows, groups]`` -> per-block ``[N, k_blocks]`` (a group's value repeated
    over its blocks; per-tensor's single row repeated over the N rows): what the graph's
    ``Gather``/``Expand`` compute, in numpy."""
    return np.broadcast_to(values[:, weight.group_of_block], (weight.N, weight.k_blocks)).copy()


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
    n, k = grid.shape
    group = k if grid.scale.numel() == 1 else min(grid.group_size, k)
    scales = grid.scale.numpy().astype(np.float16)  # QuantLinear's fp16 buffer, as it is
    weight = NBitsWeight(pack_blocks(values, slot_bits, block), scales, None, k, n, slot_bits, block, group)
    if zeros is not None and not weight.zeros_per_group:
        zeros = pack_bits(per_block(zeros, weight), slot_bits)  # one a block: the operator's own packed form
    return replace(weight, zero_points=zeros)


def file_bits_per_weight(grid: QuantizedWeight, slot_bits: int) -> float:
    """Bits a weight of ``grid`` takes in the file as :func:`nbits_weight` writes it: codes in padded
    blocks, memopt's fp16 scales, uint8 zero points (a byte a group at 8 bits, packed per block below)."""
    n, k = grid.shape
    block = block_size_for(grid)
    k_blocks = math.ceil(k / block)
    bits = n * k_blocks * block * slot_bits + 16 * grid.scale.numel()
    if grid.zero_kind == "int":
        per_group = slot_bits == 8 and grid.scale.shape != (n, k_blocks)
        bits += 8 * grid.scale.numel() if per_group else n * math.ceil(k_blocks * slot_bits / 8) * 8
    return bits / (n * k)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``[rows, bytes]`` -> uint8 ``[rows, count]``."""
    rows, width = packed.shape
    flat = unpack_codes(torch.from_numpy(np.ascontiguousarray(packed).reshape(-1)), bits, rows * width * 8 // bits)
    return flat.numpy().reshape(rows, -1)[:, :count]


def decode(weight: NBitsWeight) -> np.ndarray:
    """The operator's formula in numpy: ``W [N, K]`` float32 = ``(q - zero_point) * scale`` per block."""
    n, k_blocks = weight.N, weight.k_blocks
    q = unpack_bits(weight.packed.reshape(n, -1), weight.bits, k_blocks * weight.block_size)
    if weight.zero_points is None:
        zero = np.full((n, k_blocks), 1 << (weight.bits - 1), dtype=np.float32)
    elif weight.zeros_per_group:
        zero = per_block(weight.zero_points, weight).astype(np.float32)
    else:
        zero = unpack_bits(weight.zero_points, weight.bits, k_blocks).astype(np.float32)
    blocks = q.reshape(n, k_blocks, weight.block_size).astype(np.float32)
    scales = per_block(weight.scales.astype(np.float32), weight)  # fp16 -> fp32: exact
    w = (blocks - zero[..., None]) * scales[..., None]  # [N, k_blocks, block]
    return w.reshape(n, -1)[:, :weight.K]


def graph_parts(weight: NBitsWeight, a: str, prefix: str, output: str) -> tuple[list, list]:
    """Initializers and nodes (in order) computing ``output = a @ W^T`` with one MatMulNBits node named
    ``prefix``; its inputs are named ``prefix.qweight``, ``prefix.scales``, ``prefix.qzeros``."""
    inits = [numpy_helper.from_array(weight.packed, f"{prefix}.qweight"),
             numpy_helper.from_array(weight.scales, f"{prefix}.scales")]
    nodes = [helper.make_node("Cast", [f"{prefix}.scales"], [f"{prefix}.scales_f32"], name=f"{prefix}.scales_cast",
                              to=TensorProto.FLOAT)]
    inputs = [a, f"{prefix}.qweight", _widen(weight, prefix, f"{prefix}.scales_f32", inits, nodes)]
    if weight.zero_points is not None:
        inits.append(numpy_helper.from_array(weight.zero_points, f"{prefix}.qzeros"))
        zeros = f"{prefix}.qzeros"
        inputs.append(_widen(weight, prefix, zeros, inits, nodes) if weight.zeros_per_group else zeros)
    # accuracy_level 0: A stays float32 (1 would allow the same; 4 would quantize A to int8 blocks).
    nodes.append(helper.make_node("MatMulNBits", inputs, [output], name=prefix, domain=DOMAIN, K=weight.K, N=weight.N,
                                  bits=weight.bits, block_size=weight.block_size, accuracy_level=0))
    return inits, nodes


def _widen(weight: NBitsWeight, prefix: str, name: str, inits: list, nodes: list) -> str:
    """Append the nodes (and their index or shape initializer, once a layer) turning ``name [rows, groups]``
    into ``[N, k_blocks]``, a value per block; the name of the result (``name`` when nothing is needed)."""
    present = {t.name for t in inits}
    if weight.scales.shape[1] != weight.k_blocks:
        if f"{prefix}.block_groups" not in present:
            inits.append(numpy_helper.from_array(weight.group_of_block, f"{prefix}.block_groups"))
        nodes.append(helper.make_node("Gather", [name, f"{prefix}.block_groups"], [f"{name}_blocks"],
                                      name=f"{name}_gather", axis=1))
        name = f"{name}_blocks"
    if weight.scales.shape[0] != weight.N:
        if f"{prefix}.block_shape" not in present:
            shape = np.array([weight.N, weight.k_blocks], dtype=np.int64)
            inits.append(numpy_helper.from_array(shape, f"{prefix}.block_shape"))
        nodes.append(helper.make_node("Expand", [name, f"{prefix}.block_shape"], [f"{name}_rows"],
                                      name=f"{name}_expand"))
        name = f"{name}_rows"
    return name


def run_on_identity(inits: list, nodes: list, a: str, output: str, k: int, n: int) -> np.ndarray:
    """Run ``nodes`` (one MatMulNBits and what feeds it) in ONNX Runtime with ``a = I [K, K]``:
    ``W^T [K, N]`` as the operator decodes it from ``inits``."""
    graph = helper.make_graph(nodes, "dequantize", [helper.make_tensor_value_info(a, TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [k, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([output], {a: np.eye(k, dtype=np.float32)})[0]


def ort_dequantized(weight: NBitsWeight) -> np.ndarray:
    """``W^T [K, N]`` as ONNX Runtime's own MatMulNBits kernel decodes it, the scale nodes included:
    the node alone applied to the identity ``A = I [K, K]`` (an independent check of the bytes)."""
    inits, nodes = graph_parts(weight, "A", "nbits", "Y")
    return run_on_identity(inits, nodes, "A", "Y", weight.K, weight.N)
