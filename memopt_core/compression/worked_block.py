"""A worked block for "How it works": the values of one real block of a layer, its scale(s), its
codes, what they decode to and the error, computed with the engine's own quantizers (pure torch).

The block is the first one the format defines: the first group of row 0 for the integer grid,
the first block of the flattened weight for NF4 / MXFP4 / NVFP4, the first sub-block of the first
superblock for k-quants (or of its fallback layout), the first values of row 0 for FP8.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from memopt_core.compression.walk import effective_weight, target_linears
from memopt_core.compression.weight_view import grid_levels
from memopt_core.config import QuantConfig
from memopt_core.primitives.formats.kquants import KQUANTS, superblock_steps
from memopt_core.primitives.formats.microscaling import block_steps
from memopt_core.primitives.formats.nf4 import block_absmax
from memopt_core.primitives.formats.registry import dequantize_format, format_levels, quantize_format
from memopt_core.primitives.formats.stored import StoredWeight
from memopt_core.primitives.packing import unpack_codes
from memopt_core.primitives.quant import dequantize, quantize_weight

MAX_SHOWN = 64  # values of a block shown at most (an integer group or a superblock can be longer)
_CODE_BITS = {"nf4": 4, "mxfp4": 4, "nvfp4": 4, "q5_0": 5, "iq4_nl": 4}


@dataclass
class WorkedBlock:
    where: str  # which weights: "row 0, columns 0-63"
    values: list[float]  # the original weights
    codes: list[int]  # what is stored per weight
    decoded: list[float]  # what the codes decode to
    scales: list[str]  # one line per stored scale / minimum, with its dtype
    levels: list[float]  # every value this block can take

    @property
    def errors(self) -> list[float]:
        return [d - v for v, d in zip(self.values, self.decoded)]

    @property
    def max_abs_error(self) -> float:
        return max((abs(e) for e in self.errors), default=0.0)


def _int_block(w: torch.Tensor, quant: QuantConfig) -> WorkedBlock:
    qw = quantize_weight(w, quant)
    n = min(qw.group_size if quant.granularity != "per-tensor" else w.shape[1], w.shape[1], MAX_SHOWN)
    lines = [f"scale s = {qw.scale.reshape(-1)[0].item():.6g} (fp16)"]
    if qw.zero is not None:
        lines.append(f"{'zero point' if qw.zero_kind == 'int' else 'minimum'} = {qw.zero.reshape(-1)[0].item():.6g} (fp16)")
    return WorkedBlock(f"row 0, columns 0-{n - 1}", w[0, :n].tolist(), qw.codes[0, :n].tolist(),
                       dequantize(qw)[0, :n].tolist(), lines, grid_levels(w, quant))


def _scale_lines(stored: StoredWeight) -> tuple[list[str], int]:
    """(lines describing block 0's scales, the number of weights the block covers)."""
    fmt, t = stored.format, stored.tensors
    if fmt == "nf4":
        line = f"absmax = {block_absmax(stored)[0].item():.6g}"
        if "absmax" in t:
            return [line + " (fp32)"], 64
        return [line + f" (decoded from 8-bit code {int(t['absmax_codes'][0])} x fp32 {t['absmax_scale'][0].item():.4g}"
                f" + mean {t['absmax_mean'][0].item():.4g}: double quantization)"], 64
    if fmt.startswith("fp8"):
        return [f"scale = absmax / {'448' if 'e4m3' in fmt else '57344'} = {t['scale'].reshape(-1)[0].item():.6g} (fp32)"], 16
    if fmt == "mxfp4":
        exponent = int(t["scale"][0]) - 127
        return [f"scale = 2^{exponent} = {block_steps(stored)[0].item():.6g} (E8M0 byte {int(t['scale'][0])})"], 32
    if fmt == "nvfp4":
        return [f"block scale = {t['scale'][0].float().item():.6g} (FP8 E4M3)",
                f"tensor scale = {t['global_scale'][0].item():.6g} (fp32)"], 16
    layout = stored.meta["layout"]
    if layout in KQUANTS:
        step, shift = superblock_steps(stored)
        lines = [f"superblock d = {t['d'][0].item():.6g} (fp16); sub-block step d x sc = {step[0, 0].item():.6g}"]
        if shift is not None:
            lines.append(f"superblock dmin = {t['dmin'][0].item():.6g} (fp16); sub-block minimum dmin x m = "
                         f"{shift[0, 0].item():.6g}")
        return lines, KQUANTS[layout].sub
    if layout == "f16":
        return ["no scale: stored as fp16 (llama.cpp's fallback for rows not a multiple of 32)"], 16
    return [f"d = {t['d'][0].item():.6g} (fp16), layout {layout.upper()} (llama.cpp's fallback)"], 32


def _codes(stored: StoredWeight, n: int) -> list[int]:
    t, layout = stored.tensors, stored.meta.get("layout", stored.format)
    if stored.format.startswith("fp8"):
        return t["values"].reshape(-1)[:n].view(torch.uint8).tolist()
    if layout in KQUANTS:
        spec = KQUANTS[layout]
        return (unpack_codes(t["codes"], spec.code_bits, n).long() - spec.code_offset).tolist()
    if layout == "q8_0":
        return t["codes"][:n].tolist()
    if layout == "f16":
        return t["weight"].reshape(-1)[:n].view(torch.int16).tolist()
    return unpack_codes(t["codes"], _CODE_BITS[layout], n).tolist()


def worked_block(weight: torch.Tensor, quant: QuantConfig) -> WorkedBlock:
    """The first block of ``weight [out, in]`` (not changed) under ``quant`` (any format, no rotation)."""
    w = weight.detach().float().cpu()
    if quant.format == "int":
        return _int_block(w, quant)
    stored = quantize_format(w, quant.format, quant.double_quant, quant.granularity == "per-channel")
    lines, n = _scale_lines(stored)
    n = min(n, w.numel(), MAX_SHOWN)
    decoded = dequantize_format(stored).reshape(-1)[:n]
    where = f"row 0, columns 0-{n - 1}" if n <= w.shape[1] else f"the first {n} weights (rows run on)"
    return WorkedBlock(where, w.reshape(-1)[:n].tolist(), _codes(stored, n), decoded.tolist(), lines,
                       format_levels(stored, 0).tolist())


def first_layer_block(bench, quant: QuantConfig) -> tuple[str, WorkedBlock]:
    """(name, worked block) of the first targeted layer of ``bench``'s original (a Workbench; not changed)."""
    name, module = next(iter(target_linears(bench.loaded.model).items()))
    return name, worked_block(effective_weight(module), quant)
