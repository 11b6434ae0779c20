"""How to prune and how to quantize: the two halves of a compression setting."""
from __future__ import annotations

from dataclasses import dataclass

from memopt_core.config.checks import one_of, require, require_number
from memopt_core.config.choices import (FORMAT_BITS, FORMAT_BLOCKS, GRANULARITIES, MAX_PRUNE_RATIO, PRUNE_METHODS,
                                        PRUNE_PATTERNS, QUANT_BITS, QUANT_FORMATS, QUANT_METHODS, RANGE_METHODS,
                                        ROTATIONS, STORAGES, ZERO_POINTS)
from memopt_core.errors import choices


@dataclass(frozen=True)
class PruneConfig:
    """How to prune. ``ratio`` is the fraction of weights removed per layer (or overall for
    ``magnitude-global``); with an N:M ``pattern`` the ratio is implied (2:4 and 4:8 remove half)."""

    method: str = "magnitude"
    ratio: float = 0.5
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        one_of("prune method", self.method, PRUNE_METHODS)
        one_of("prune pattern", self.pattern, PRUNE_PATTERNS)
        require_number("prune ratio", self.ratio)
        require(0.0 <= self.ratio <= MAX_PRUNE_RATIO,
                 f"prune ratio {self.ratio} is out of range; choose a value from 0 to {MAX_PRUNE_RATIO}")
        if self.pattern != "unstructured":
            require(self.method not in ("magnitude-global", "l2-structured"),
                     f"prune pattern {self.pattern} works with magnitude, wanda or sparsegpt, not {self.method}")
            object.__setattr__(self, "ratio", 1.0 - self.n / self.m)

    @property
    def n(self) -> int:
        return int(self.pattern.split(":")[0]) if ":" in self.pattern else 0

    @property
    def m(self) -> int:
        return int(self.pattern.split(":")[1]) if ":" in self.pattern else 0

    @property
    def is_noop(self) -> bool:
        return self.pattern == "unstructured" and self.ratio == 0.0

    @property
    def label(self) -> str:
        if self.pattern != "unstructured":
            return f"{self.method} {self.pattern}"
        return f"{self.method} {self.ratio:.0%}"

    @classmethod
    def from_cli(cls, method: str, ratio: float = 0.0, pattern: str = "unstructured") -> "PruneConfig":
        """Accept the CLI shorthands ``--prune-method 2:4`` and ``4:8`` (magnitude N:M)."""
        if method in ("2:4", "4:8"):
            return cls(method="magnitude", ratio=0.0, pattern=method)
        return cls(method=method, ratio=ratio, pattern=pattern)


@dataclass(frozen=True)
class QuantConfig:
    """Weight-only quantization. ``rtn``/``gptq`` give integer codes of ``bits`` bits with fp16
    scales (and zero points when asymmetric); ``fp16``/``bf16`` are plain casts.

    ``group_size`` applies with granularity ``group``; a size that does not divide the input
    width leaves a shorter last group. ``zero_point='float'`` stores a float minimum (GGUF Q4_1)
    instead of an integer zero point (GPTQ). ``storage='fake'`` keeps dequantized floats, so the
    memory saving is simulated only.

    ``format`` other than ``int`` (NF4, FP8, MXFP4, NVFP4, k-quants; round-to-nearest only) fixes
    its own bits and blocks: ``bits``, ``granularity`` and ``group_size`` are set from it (FP8
    keeps per-channel or per-tensor). ``double_quant`` quantizes NF4's scales too.
    ``rotate='hadamard'`` quantizes the weight in a randomized Hadamard basis of its input
    dimension and rotates the inputs at run time (same function before quantization).
    ``range_method`` ``percentile``/``entropy`` clip the integer grid's ranges from the layer's
    histogram.
    """

    method: str = "rtn"
    bits: int = 4
    granularity: str = "per-channel"
    group_size: int = 128
    symmetric: bool = True
    zero_point: str = "int"
    range_method: str = "minmax"
    storage: str = "packed"
    format: str = "int"
    double_quant: bool = False
    rotate: str = "none"

    def __post_init__(self) -> None:
        one_of("quantization method", self.method, QUANT_METHODS)
        one_of("format", self.format, QUANT_FORMATS)
        one_of("rotation", self.rotate, ROTATIONS)
        require(isinstance(self.double_quant, bool), f"double quant must be True or False, got {self.double_quant!r}")
        if self.is_cast:
            require(self.format == "int" and self.rotate == "none" and not self.double_quant,
                     f"{self.method} is a plain cast; it takes no format, rotation or double quantization")
            object.__setattr__(self, "bits", 16)
            return
        if self.format != "int":
            self._fix_format()
        require_number("bits", self.bits, int)
        require(self.bits in QUANT_BITS, f"bits {self.bits} is not supported; choose {choices(QUANT_BITS)}, "
                 "or 16 for no quantization")
        one_of("granularity", self.granularity, GRANULARITIES)
        require_number("group size", self.group_size, int)
        require(self.group_size > 0, f"group size {self.group_size} must be a positive whole number (e.g. 32, 64, 128)")
        one_of("zero point", self.zero_point, ZERO_POINTS)
        require(not (self.symmetric and self.zero_point == "float"),
                 "zero point 'float' (a float minimum) only applies to asymmetric quantization")
        one_of("range method", self.range_method, RANGE_METHODS)
        one_of("storage", self.storage, STORAGES)
        require(not self.double_quant or self.format == "nf4",
                 f"double quantization applies to format nf4, not {self.format}")

    def _fix_format(self) -> None:
        """A format other than int sets bits, granularity and group size itself (one key per setting)."""
        require(self.method == "rtn", f"format {self.format} is round-to-nearest; GPTQ uses the integer grid "
                 "(format int)")
        require(self.range_method == "minmax", f"range {self.range_method} applies to the integer grid "
                 f"(format int); {self.format} takes its scales from each block's absmax")
        require(self.symmetric, f"format {self.format} has its own zero handling; drop the asymmetric grid")
        fields = {"bits": FORMAT_BITS[self.format]}
        if self.format.startswith("fp8"):
            require(self.granularity in ("per-channel", "per-tensor"),
                     f"format {self.format} has a per-channel or per-tensor scale, not groups")
            fields["group_size"] = QuantConfig.group_size
        else:
            fields.update(granularity="group", group_size=FORMAT_BLOCKS[self.format])
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def is_cast(self) -> bool:
        return self.method in ("fp16", "bf16")

    @property
    def effective_group_size(self) -> int | None:
        """Group size along the input dimension, or None for one group per row / per tensor."""
        return self.group_size if self.granularity == "group" else None

    @property
    def label(self) -> str:
        """Field names: ``W4A16 g128 sym``, ``W8A16 per-channel asym``, ``fp16``."""
        if self.is_cast:
            return self.method
        rotated = " rot" if self.rotate == "hadamard" else ""
        fake = " (fake)" if self.storage == "fake" else ""
        if self.format != "int":
            return f"{self.format_label}{rotated}{fake}"
        grain = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        sym = "sym" if self.symmetric else ("asym-fmin" if self.zero_point == "float" else "asym")
        extra = {"clip-search": " clip", "percentile": " p99.9", "entropy": " KL"}.get(self.range_method, "")
        prefix = "" if self.method == "rtn" else f"{self.method.upper()} "
        return f"{prefix}W{self.bits}A16 {grain} {sym}{extra}{rotated}{fake}"

    @property
    def format_label(self) -> str:
        """``NF4 b64 dq``, ``FP8-E4M3 per-channel``, ``MXFP4 b32``, ``Q4_K``; ``int`` for the integer grid."""
        if self.format == "int":
            return "int"
        name = self.format.upper()
        if self.format.startswith("fp8"):
            return f"{name} {self.granularity}"
        if self.format.startswith("q"):
            return name
        return f"{name} b{self.group_size}" + (" dq" if self.double_quant else "")

    @classmethod
    def from_bits(cls, bits: int | str, **kwargs) -> "QuantConfig | None":
        """CLI/slider helper: 16 (or 'none') means no quantization; 'fp16'/'bf16' mean a cast."""
        if isinstance(bits, str):
            text = bits.strip().lower()
            if text in ("fp16", "bf16"):
                return cls(method=text)
            if text in ("16", "none", "fp32", "32"):
                return None
            require(text.lstrip("-").isdigit(), f"bits {bits!r} is not a number; choose {choices(QUANT_BITS)}, 16, fp16 or bf16")
            bits = int(text)
        if bits in (16, 32):
            cls(bits=8, **kwargs)  # still validate the other settings: a bad group size is never ignored
            return None
        return cls(bits=bits, **kwargs)


def needs_calibration(prune: PruneConfig | None, quant: QuantConfig | None) -> bool:
    """GPTQ, Wanda and SparseGPT need calibration statistics; RTN and magnitude do not."""
    return (quant is not None and quant.method == "gptq") or (prune is not None and prune.method in ("wanda", "sparsegpt"))
