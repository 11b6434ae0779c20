"""Frozen, self-validating settings. A config that exists is a config that is valid.

Each dataclass checks itself in ``__post_init__`` and raises :class:`ConfigError` with a
one-line message naming the bad value and the allowed ones.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

from memopt_core.errors import ConfigError, choices

BUNDLED_MODELS = ("smollm2-135m", "minilm-l6", "tiny-llama", "tiny-bert")
DEVICES = ("cpu", "cuda", "mps", "auto")
DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPES = ("float32", "bfloat16")
PRUNE_METHODS = ("magnitude", "magnitude-global", "l2-structured", "wanda", "sparsegpt")
PRUNE_PATTERNS = ("unstructured", "2:4", "4:8")
QUANT_METHODS = ("rtn", "gptq", "fp16", "bf16")
QUANT_BITS = (2, 3, 4, 5, 6, 8)
GRANULARITIES = ("per-channel", "per-tensor", "group")
ZERO_POINTS = ("int", "float")
RANGE_METHODS = ("minmax", "clip-search", "percentile", "entropy")
# Number formats: "int" is the integer grid (bits, group size, symmetric apply); the others fix their
# own element bits and blocks (memopt_core.primitives.formats).
QUANT_FORMATS = ("int", "nf4", "fp8-e4m3", "fp8-e5m2", "mxfp4", "nvfp4", "q2_k", "q3_k", "q4_k", "q6_k")
FORMAT_BITS = {"nf4": 4, "fp8-e4m3": 8, "fp8-e5m2": 8, "mxfp4": 4, "nvfp4": 4, "q2_k": 2, "q3_k": 3, "q4_k": 4,
               "q6_k": 6}
FORMAT_BLOCKS = {"nf4": 64, "mxfp4": 32, "nvfp4": 16, "q2_k": 256, "q3_k": 256, "q4_k": 256, "q6_k": 256}
ROTATIONS = ("none", "hadamard")
STORAGES = ("packed", "fake")
BUNDLED_TEXTS = ("wikipedia", "news")
MAX_PRUNE_RATIO = 0.95
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(name: str, value, allowed) -> None:
    _require(value in allowed, f"{name} {value!r} is not supported; choose {choices(allowed)}")


def _number(name: str, value, kind=(int, float)) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    _require(ok, f"{name} must be a number, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and where: a bundled key, a local folder or a Hugging Face id."""

    source: str
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    revision: str | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.source, str) and self.source.strip() != "",
                 "model must be a bundled name, a local folder or a Hugging Face id; got an empty value")
        object.__setattr__(self, "source", self.source.strip())
        _require(self.device in DEVICES or re.fullmatch(r"cuda:\d+", str(self.device)) is not None,
                 f"device {self.device!r} is not supported; choose {choices(DEVICES)}")
        _one_of("dtype", self.dtype, DTYPES)
        if self.origin == "hub":
            _require(_HUB_ID.match(self.source) is not None,
                     f"model {self.source!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}), "
                     "an existing folder, nor a valid Hugging Face id")

    @property
    def origin(self) -> str:
        """'bundled', 'local' or 'hub'."""
        if self.source in BUNDLED_MODELS:
            return "bundled"
        if os.path.isdir(os.path.expanduser(self.source)) or self.source.startswith((".", "/", "~")):
            return "local"
        return "hub"


@dataclass(frozen=True)
class TargetConfig:
    """Which Linear layers are compressed.

    By default every ``nn.Linear`` inside the transformer blocks (embeddings and ``lm_head`` stay).
    ``include`` (fnmatch patterns over module names, e.g. ``"lm_head"`` or ``"*.mlp.*"``) replaces
    that default selection with the Linears matching any pattern; ``exclude`` then removes matches.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = tuple(getattr(self, name))
            _require(all(isinstance(p, str) and p for p in value), f"{name} patterns must be non-empty strings")
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class PruneConfig:
    """How to prune. ``ratio`` is the fraction of weights removed per layer (or overall for
    ``magnitude-global``); with an N:M ``pattern`` the ratio is implied (2:4 and 4:8 remove half)."""

    method: str = "magnitude"
    ratio: float = 0.5
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        _one_of("prune method", self.method, PRUNE_METHODS)
        _one_of("prune pattern", self.pattern, PRUNE_PATTERNS)
        _number("prune ratio", self.ratio)
        _require(0.0 <= self.ratio <= MAX_PRUNE_RATIO,
                 f"prune ratio {self.ratio} is out of range; choose a value from 0 to {MAX_PRUNE_RATIO}")
        if self.pattern != "unstructured":
            _require(self.method not in ("magnitude-global", "l2-structured"),
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
        _one_of("quantization method", self.method, QUANT_METHODS)
        _one_of("format", self.format, QUANT_FORMATS)
        _one_of("rotation", self.rotate, ROTATIONS)
        _require(isinstance(self.double_quant, bool), f"double quant must be True or False, got {self.double_quant!r}")
        if self.is_cast:
            _require(self.format == "int" and self.rotate == "none" and not self.double_quant,
                     f"{self.method} is a plain cast; it takes no format, rotation or double quantization")
            object.__setattr__(self, "bits", 16)
            return
        if self.format != "int":
            self._fix_format()
        _number("bits", self.bits, int)
        _require(self.bits in QUANT_BITS, f"bits {self.bits} is not supported; choose {choices(QUANT_BITS)}, "
                 "or 16 for no quantization")
        _one_of("granularity", self.granularity, GRANULARITIES)
        _number("group size", self.group_size, int)
        _require(self.group_size > 0, f"group size {self.group_size} must be a positive whole number (e.g. 32, 64, 128)")
        _one_of("zero point", self.zero_point, ZERO_POINTS)
        _require(not (self.symmetric and self.zero_point == "float"),
                 "zero point 'float' (a float minimum) only applies to asymmetric quantization")
        _one_of("range method", self.range_method, RANGE_METHODS)
        _one_of("storage", self.storage, STORAGES)
        _require(not self.double_quant or self.format == "nf4",
                 f"double quantization applies to format nf4, not {self.format}")

    def _fix_format(self) -> None:
        """A format other than int sets bits, granularity and group size itself (one key per setting)."""
        _require(self.method == "rtn", f"format {self.format} is round-to-nearest; GPTQ uses the integer grid "
                 "(format int)")
        _require(self.range_method == "minmax", f"range {self.range_method} applies to the integer grid "
                 f"(format int); {self.format} takes its scales from each block's absmax")
        _require(self.symmetric, f"format {self.format} has its own zero handling; drop the asymmetric grid")
        fields = {"bits": FORMAT_BITS[self.format]}
        if self.format.startswith("fp8"):
            _require(self.granularity in ("per-channel", "per-tensor"),
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
            _require(text.lstrip("-").isdigit(), f"bits {bits!r} is not a number; choose {choices(QUANT_BITS)}, 16, fp16 or bf16")
            bits = int(text)
        if bits in (16, 32):
            cls(bits=8, **kwargs)  # still validate the other settings: a bad group size is never ignored
            return None
        return cls(bits=bits, **kwargs)


@dataclass(frozen=True)
class EvalConfig:
    """How quality is measured. ``text`` is ``wikipedia``, ``news`` or a path to a UTF-8 file."""

    text: str = "wikipedia"
    seq_len: int = 512
    max_tokens: int = 4096
    seed: int = 0
    prompt: str = "The capital of France is"
    gen_tokens: int = 24
    kl_top_k: int | None = 64  # KL over the original's top-k tokens + a rest bucket; None = exact
    zero_shot: bool = True
    compute_dtype: str | None = None  # "compute in" for original and copy alike; None = as the weights are loaded

    def __post_init__(self) -> None:
        _require(isinstance(self.text, str) and self.text.strip() != "", "evaluation text must be 'wikipedia', 'news' or a file path")
        _number("sequence length", self.seq_len, int)
        _number("max tokens", self.max_tokens, int)
        _require(8 <= self.seq_len <= 32768, f"sequence length {self.seq_len} is out of range; choose 8 to 32768")
        _require(self.max_tokens >= self.seq_len,
                 f"max tokens {self.max_tokens} is below the sequence length {self.seq_len}: no full window fits")
        _number("generation tokens", self.gen_tokens, int)
        _require(0 <= self.gen_tokens <= 512, f"generation tokens {self.gen_tokens} is out of range; choose 0 to 512")
        _require(isinstance(self.prompt, str) and (self.gen_tokens == 0 or self.prompt.strip() != ""),
                 "the generation prompt is empty; give a prompt or set generation tokens to 0")
        if self.kl_top_k is not None:
            _require(isinstance(self.kl_top_k, int) and self.kl_top_k > 0, f"kl_top_k {self.kl_top_k!r} must be a positive integer or None")
        if self.compute_dtype is not None:
            _one_of("compute dtype", self.compute_dtype, COMPUTE_DTYPES)

    @property
    def text_is_bundled(self) -> bool:
        return self.text in BUNDLED_TEXTS


@dataclass(frozen=True)
class SolverConfig:
    """Solver settings shared by GPTQ and SparseGPT.

    ``act_order``: visit columns by decreasing Hessian diagonal (GPTQ only; SparseGPT keeps the
    original order so N:M groups stay contiguous). ``damp``: added to the Hessian diagonal as a
    fraction of its mean. ``block_size``: columns per lazy batch update (the result does not
    depend on it, only the speed does). ``static_groups``: fit group scales on the original weight.
    """

    act_order: bool = True
    damp: float = 0.01
    block_size: int = 128
    static_groups: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.act_order, bool) and isinstance(self.static_groups, bool),
                 "act_order and static_groups must be true or false")
        _require(isinstance(self.damp, (int, float)) and not isinstance(self.damp, bool) and 0.0 <= self.damp <= 1.0,
                 f"GPTQ dampening {self.damp!r} is out of range; choose 0 to 1 (default 0.01)")
        _require(isinstance(self.block_size, int) and not isinstance(self.block_size, bool) and self.block_size >= 1,
                 f"GPTQ block size {self.block_size!r} must be a positive whole number (default 128)")


@dataclass(frozen=True)
class CalibConfig:
    """Calibration data for GPTQ, Wanda and SparseGPT: ``samples`` sequences of ``seq_len`` tokens
    drawn from ``text`` (``both`` bundled texts by default, one of them, or a file path), never
    from the tokens being evaluated; ``solver``: the GPTQ/SparseGPT solver settings."""

    text: str = "both"
    samples: int = 64
    seq_len: int = 512
    seed: int = 0
    solver: SolverConfig = field(default_factory=SolverConfig)

    def __post_init__(self) -> None:
        if isinstance(self.solver, dict):  # from a stored result's JSON
            object.__setattr__(self, "solver", SolverConfig(**self.solver))
        _require(isinstance(self.solver, SolverConfig), f"solver must be a SolverConfig, got {self.solver!r}")
        _require(isinstance(self.text, str) and self.text.strip() != "",
                 "calibration text must be 'both', 'wikipedia', 'news' or a file path")
        _number("calibration samples", self.samples, int)
        _number("calibration length", self.seq_len, int)
        _require(1 <= self.samples <= 4096, f"calibration samples {self.samples} is out of range; choose 1 to 4096")
        _require(8 <= self.seq_len <= 32768, f"calibration length {self.seq_len} is out of range; choose 8 to 32768")


def needs_calibration(prune: PruneConfig | None, quant: QuantConfig | None) -> bool:
    """GPTQ, Wanda and SparseGPT need calibration statistics; RTN and magnitude do not."""
    return (quant is not None and quant.method == "gptq") or (prune is not None and prune.method in ("wanda", "sparsegpt"))


@dataclass(frozen=True)
class RunConfig:
    """One compression run: a model, optional pruning, optional quantization, how to evaluate."""

    model: ModelSpec
    prune: PruneConfig | None = None
    quant: QuantConfig | None = None
    targets: TargetConfig = field(default_factory=TargetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)

    @property
    def needs_calibration(self) -> bool:
        """GPTQ, Wanda and SparseGPT need calibration statistics; RTN and magnitude do not."""
        return needs_calibration(self.prune, self.quant)

    def __post_init__(self) -> None:
        if self.prune is not None and self.prune.is_noop:
            object.__setattr__(self, "prune", None)
        _require(self.prune is None or self.quant is None or self.quant.rotate == "none",
                 "rotation mixes pruned zeros back into every weight; prune or rotate, not both")

    @property
    def label(self) -> str:
        """The setting in the field's words: ``magnitude 50% + W4A16 g64 sym``, or ``uncompressed``."""
        return " + ".join(x.label for x in (self.prune, self.quant) if x is not None) or "uncompressed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        def build(kind, value):
            return None if value is None else kind(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()})
        return cls(model=build(ModelSpec, data["model"]), prune=build(PruneConfig, data.get("prune")),
                   quant=build(QuantConfig, data.get("quant")), targets=build(TargetConfig, data.get("targets") or {}),
                   eval=build(EvalConfig, data.get("eval") or {}), calib=build(CalibConfig, data.get("calib") or {}))


@dataclass(frozen=True)
class OffloadConfig:
    """The layer-by-layer route for models larger than memory: the weights a model may hold in
    memory (``max_memory`` bytes; the rest stays on disk and is read one block at a time) and
    where offloaded weights go (``offload_dir``; by default a temporary folder). It changes where
    tensors live, never a figure: results equal the in-memory route's."""

    max_memory: int
    offload_dir: str | None = None

    def __post_init__(self) -> None:
        _number("max memory", self.max_memory, int)
        _require(self.max_memory > 0, f"max memory {self.max_memory} must be a positive number of bytes")
        _require(self.offload_dir is None or (isinstance(self.offload_dir, str) and self.offload_dir.strip() != ""),
                 "offload folder must be a folder path")

    @classmethod
    def from_text(cls, size: str, offload_dir: str | None = None) -> "OffloadConfig":
        """Parse ``'300MB'`` (10^6 bytes), ``'2GiB'`` (2^30 bytes), ``'512MiB'`` ... with accelerate's parser."""
        # accelerate imports torch: loaded only once a size is really parsed, not when the CLI starts.
        from accelerate.utils import convert_file_size_to_int

        text = str(size).strip()
        try:
            value = convert_file_size_to_int(text)
        except (ValueError, OverflowError):
            value = -1
        # A lower-case 'b' means bits to accelerate: refused, so '300mb' cannot silently mean 37.5 MB.
        _require(value > 0 and text.endswith("B"),
                 f"max memory {size!r} is not a size; write it like 300MB, 512MiB or 2GiB (B for bytes)")
        return cls(max_memory=value, offload_dir=offload_dir)


@dataclass(frozen=True)
class ClusterConfig:
    """Where a sweep's settings run on Ray: ``address`` of an existing cluster (``host:port``,
    ``ray://host:port`` or ``auto``), or None for a local cluster on this machine only; ``workers``
    processes, each loading the model once (None: as many as the cluster's CPUs allow), each with
    ``cpus_per_worker`` CPUs and as many compute threads."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1

    def __post_init__(self) -> None:
        if self.address is not None:
            _require(isinstance(self.address, str) and self.address.strip() != "",
                     "cluster address must be host:port, ray://host:port or auto; leave it out for a local cluster")
            object.__setattr__(self, "address", self.address.strip())
        if self.workers is not None:
            _number("workers", self.workers, int)
            _require(self.workers >= 1, f"workers {self.workers} must be at least 1")
        _number("CPUs per worker", self.cpus_per_worker, int)
        _require(self.cpus_per_worker >= 1, f"CPUs per worker {self.cpus_per_worker} must be at least 1")
