"""The types each deployment format holds, and the memopt setting each type means.

A GGUF ``Q4_1`` block is 32 weights ``w = d * q + m`` with an fp16 scale ``d``, an fp16 minimum
``m`` and 4-bit codes ``q``: exactly memopt's 4-bit asymmetric group-32 grid with a float minimum,
so ``--type Q4_1`` alone means that setting, and the codes memopt evaluated are the codes written.
compressed-tensors ``pack-quantized`` holds signed int4/int8 codes with a scale per channel or per
group (and an integer zero point when asymmetric). ONNX ``int8``/``int4`` are ONNX Runtime's own
quantizers applied to the exported float graph, so they set no memopt setting; ``int4-codes`` and
``int8-codes`` ship memopt's own codes and scales in ONNX Runtime's MatMulNBits operator, so they
mean a memopt setting of at most that many bits (4-bit / 8-bit symmetric g32 when none is given).
"""
from __future__ import annotations

from dataclasses import dataclass

from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError, choices

FORMATS = ("gguf", "compressed-tensors", "onnx")
GGUF_BLOCK = 32
K_QUANT_BLOCK = 256
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")


@dataclass(frozen=True)
class FormatType:
    """One type of one format. ``bits``/``zero_kind`` describe its integer grid (None: dense floats
    of ``dense_dtype``); ``group_size`` is fixed by the format (GGUF blocks of 32) or None."""

    format: str
    name: str
    description: str
    bits: int | None = None
    zero_kind: str | None = None  # 'symmetric', 'float' (a float minimum) or 'int' (integer zero point)
    group_size: int | None = None
    dense_dtype: str | None = None
    memopt_codes: bool = False  # an ONNX type holding memopt's own codes (MatMulNBits), not ORT's re-quantization

    @property
    def is_quantized(self) -> bool:
        return self.bits is not None

    def quant_config(self, group_size: int | None = None) -> QuantConfig | None:
        """The memopt setting this type means (None: the float weights as they are)."""
        if self.format == "onnx" and not self.memopt_codes:
            return None
        if not self.is_quantized:
            return {"float16": QuantConfig(method="fp16"), "bfloat16": QuantConfig(method="bf16")}.get(self.dense_dtype)
        size = self.group_size or group_size
        grain = dict(granularity="group", group_size=size) if size else dict(granularity="per-channel")
        return QuantConfig(bits=self.bits, symmetric=self.zero_kind == "symmetric",
                           zero_point="float" if self.zero_kind == "float" else "int", **grain)


def _gguf(name: str, bits: int | None, kind: str | None, description: str, dense: str | None = None) -> FormatType:
    return FormatType("gguf", name, description, bits, kind, GGUF_BLOCK if bits else None, dense)


GGUF_TYPES = {t.name: t for t in (
    _gguf("Q8_0", 8, "symmetric", "8-bit symmetric, blocks of 32 with an fp16 scale (8.5 bits per weight)"),
    _gguf("Q5_1", 5, "float", "5-bit, blocks of 32 with an fp16 scale and fp16 minimum (6.0 bpw)"),
    _gguf("Q5_0", 5, "symmetric", "5-bit symmetric, blocks of 32 with an fp16 scale (5.5 bpw)"),
    _gguf("Q4_1", 4, "float", "4-bit, blocks of 32 with an fp16 scale and fp16 minimum (5.0 bpw)"),
    _gguf("Q4_0", 4, "symmetric", "4-bit symmetric, blocks of 32 with an fp16 scale (4.5 bpw)"),
    _gguf("F32", None, None, "32-bit floats", "float32"),
    _gguf("F16", None, None, "16-bit floats", "float16"),
    _gguf("BF16", None, None, "bfloat16", "bfloat16"),
)}

CT_TYPES = {t.name: t for t in (
    FormatType("compressed-tensors", "W8A16", "int8 symmetric weights, per channel or per group", 8, "symmetric"),
    FormatType("compressed-tensors", "W4A16", "int4 symmetric weights, per channel or per group", 4, "symmetric"),
    FormatType("compressed-tensors", "W8A16-asym", "int8 weights with an integer zero point", 8, "int"),
    FormatType("compressed-tensors", "W4A16-asym", "int4 weights with an integer zero point", 4, "int"),
)}

ONNX_TYPES = {t.name: t for t in (
    FormatType("onnx", "fp32", "the model's weights as float32 (memopt's dequantized weights)", dense_dtype="float32"),
    FormatType("onnx", "int8", "ONNX Runtime dynamic quantization: int8 weights per channel, "
                               "activations quantized at run time (MatMulInteger)", 8, "symmetric"),
    FormatType("onnx", "int4", "ONNX Runtime MatMulNBits: 4-bit symmetric weights in blocks of 32", 4, "symmetric", 32),
    FormatType("onnx", "int4-codes", "memopt's own codes (up to 4 bits) and scales in ONNX Runtime MatMulNBits: "
                                     "exactly what memopt evaluated (symmetric or integer zero point; groups a "
                                     "multiple of 16; memopt's fp16 scales)", 4, "symmetric", 32, memopt_codes=True),
    FormatType("onnx", "int8-codes", "memopt's own codes (up to 8 bits) and scales in ONNX Runtime MatMulNBits "
                                     "(bits=8): exactly what memopt evaluated (symmetric or integer zero point; groups "
                                     "a multiple of 16; memopt's fp16 scales)", 8, "symmetric", 32, memopt_codes=True),
)}

TYPES = {"gguf": GGUF_TYPES, "compressed-tensors": CT_TYPES, "onnx": ONNX_TYPES}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ConfigError(f"export format {name!r} is not supported; choose {choices(FORMATS)}")
    return name


def format_type(fmt: str, name: str) -> FormatType:
    """The type ``name`` of format ``fmt``; one-line errors name the choices (k-quants explain why not)."""
    table = TYPES[check_format(fmt)]
    key = name.upper() if fmt == "gguf" else name
    if fmt == "gguf" and key in K_QUANTS:
        raise ConfigError(f"GGUF type {key} is a k-quant (super-blocks of {K_QUANT_BLOCK} weights): memopt's grids map to "
                          f"the 32-weight types {choices(t for t in GGUF_TYPES if GGUF_TYPES[t].is_quantized)}, and rows "
                          f"such as SmolLM2's 576 inputs do not split into blocks of {K_QUANT_BLOCK}")
    if key not in table:
        raise ConfigError(f"{fmt} type {name!r} is not supported; choose {choices(table)}")
    return table[key]


# Explicit quantization flags a --type may be given with: the flag, and how to read it off a QuantConfig.
_FLAG_VALUES = {
    "bits": lambda q: 16 if q is None else (q.method if q.is_cast else q.bits),
    "group_size": lambda q: q.group_size if q is not None and q.granularity == "group" else None,
    "asymmetric": lambda q: q is not None and not q.is_cast and not q.symmetric,
    "zero_point": lambda q: q.zero_point if q is not None and not q.is_cast and not q.symmetric else None,
    "per_tensor": lambda q: q is not None and q.granularity == "per-tensor",
}


def setting_for_type(ftype: FormatType, given: QuantConfig | None, explicit: dict[str, object]) -> QuantConfig | None:
    """The memopt quantization to run for an export to ``ftype``.

    ``given`` is the setting the flags describe; ``explicit`` holds only the flags the user typed
    (``bits``, ``group_size``, ``asymmetric``, ``zero_point``, ``per_tensor``). A type that fixes a
    setting (GGUF, compressed-tensors) replaces ``given``, and a typed flag that says otherwise is a
    ConfigError naming both. ONNX Runtime's own types keep ``given`` (it quantizes the exported graph);
    the ``-codes`` types keep a ``given`` integer setting that fits their bits."""
    if ftype.memopt_codes:
        return _codes_setting(ftype, given, explicit)
    if ftype.format == "onnx":
        return given
    group = explicit.get("group_size") if ftype.format == "compressed-tensors" else None
    wanted = ftype.quant_config(group if isinstance(group, int) else None)
    if wanted is not None and given is not None and not given.is_cast:
        wanted = QuantConfig(**{**wanted.__dict__, "method": given.method, "range_method": given.range_method,
                                "storage": given.storage}) if not wanted.is_cast else wanted
    for flag, value in explicit.items():
        if flag in _FLAG_VALUES and _FLAG_VALUES[flag](wanted) != value:
            meaning = wanted.label if wanted is not None else "the float weights as they are"
            raise ConfigError(f"--type {ftype.name} means {meaning}; --{flag.replace('_', '-')} {value} contradicts it "
                              "(drop the flag, or drop --type to let the setting choose the type)")
    return wanted


def _codes_setting(ftype: FormatType, given: QuantConfig | None, explicit: dict[str, object]) -> QuantConfig:
    """The setting an ONNX ``-codes`` type ships: ``given`` when it is an integer grid MatMulNBits can
    hold in ``ftype.bits``-bit codes, the type's default (symmetric g32) when nothing was given."""
    if given is None or given.is_cast:
        if explicit.get("bits") not in (None, ftype.bits):
            raise ConfigError(f"--type {ftype.name} ships memopt's integer codes of at most {ftype.bits} bits; "
                              f"--bits {explicit['bits']} has none")
        given = ftype.quant_config()
    if given.format != "int" or given.rotate != "none" or given.storage != "packed":
        raise ConfigError(f"--type {ftype.name} ships memopt's stored integer codes; {given.label} has none that "
                          "MatMulNBits decodes (choose the integer grid, unrotated and packed, or the fp32 type)")
    if given.bits > ftype.bits:
        raise ConfigError(f"--type {ftype.name} holds codes of at most {ftype.bits} bits; {given.label} has "
                          f"{given.bits} (choose int8-codes, or fewer bits)")
    if not given.symmetric and given.zero_point == "float":
        raise ConfigError(f"--type {ftype.name}: MatMulNBits decodes (code - integer zero point) * scale and cannot "
                          "hold a float minimum; use --zero-point int, or export to gguf Q4_1")
    if given.granularity == "group" and (given.group_size & -given.group_size) < 16:
        raise ConfigError(f"--type {ftype.name}: groups of {given.group_size} hold no MatMulNBits block (a power "
                          "of two >= 16 dividing the group); choose a group size such as 32, 64 or 128")
    return given
