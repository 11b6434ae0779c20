"""The settings of one recovery run: a frozen config that validates itself."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from memopt_core.config import RunConfig
from memopt_core.errors import ConfigError, choices

TRAIN_LAYERS = ("compressed+norms", "compressed")
LR_RANGE = (1e-7, 1e-2)
MAX_STEPS = 100_000


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _whole(name: str, value, low: int, high: int) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be a whole number, got {value!r}")
    _require(low <= value <= high, f"{name} {value} is out of range; choose {low:,} to {high:,}")


def _real(name: str, value, low: float, high: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    _require(ok, f"{name} must be a number, got {value!r}")
    _require(low <= value <= high, f"{name} {value:g} is out of range; choose {low:g} to {high:g}")


@dataclass(frozen=True)
class RecoveryConfig:
    """Distillation from the original (the teacher) into a compressed copy.

    Causal LMs: ``tokens_per_step`` tokens per optimizer step, as windows of ``seq_len`` tokens;
    loss = KL(original || copy) of the next-token distribution, plus ``ce_weight`` times the
    next-token loss. Encoders: ``sentences_per_step`` sentences per step; loss = 1 - cosine of the
    sentence embeddings. Training text: ``both`` bundled texts (half each), one, or a file;
    never the evaluated tokens. Every ``eval_every`` steps the copy is scored on held-out
    validation windows (``validation_windows`` of ``seq_len``) or ``validation_sentences``; the best
    checkpoint so far is what a stopped or finished run keeps. ``layers``: the compressed layers
    only, or their norms too; ``only``: fnmatch patterns restricting which compressed layers train.
    AdamW at ``lr`` (scales at ``lr * scale_lr_factor``), linear warm-up over the first tenth of
    the steps (at most 10), cosine decay to a tenth over the steps, or over ``max_seconds`` when
    that time limit comes first (training stops there).
    """

    steps: int = 30  # about 4 minutes on SmolLM2 and 2 CPU cores, validation included
    lr: float = 1e-4
    tokens_per_step: int = 512
    seq_len: int = 256
    sentences_per_step: int = 16  # MiniLM: 30 steps in about 30 s on 2 CPU cores
    train_text: str = "both"
    layers: str = "compressed+norms"
    only: tuple[str, ...] = ()
    scale_lr_factor: float = 1.0
    ce_weight: float = 0.0
    eval_every: int = 10
    validation_windows: int = 4
    validation_sentences: int = 64
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        _whole("steps", self.steps, 1, MAX_STEPS)
        _real("learning rate", self.lr, *LR_RANGE)
        _whole("training window length", self.seq_len, 8, 32768)
        _whole("tokens per step", self.tokens_per_step, self.seq_len, 1 << 20)
        _require(self.tokens_per_step % self.seq_len == 0,
                 f"tokens per step {self.tokens_per_step} must be a multiple of the window length {self.seq_len}")
        _whole("sentences per step", self.sentences_per_step, 1, 4096)
        _require(isinstance(self.train_text, str) and self.train_text.strip() != "",
                 "training text must be 'both', 'wikipedia', 'news' or a file path")
        _require(self.layers in TRAIN_LAYERS, f"layers {self.layers!r} is not supported; choose {choices(TRAIN_LAYERS)}")
        object.__setattr__(self, "only", tuple(self.only))
        _require(all(isinstance(p, str) and p for p in self.only), "layer patterns must be non-empty strings")
        _real("scale learning-rate factor", self.scale_lr_factor, 0.0, 100.0)
        _real("next-token loss weight", self.ce_weight, 0.0, 100.0)
        _whole("evaluate every", self.eval_every, 1, MAX_STEPS)
        _whole("validation windows", self.validation_windows, 1, 1024)
        _whole("validation sentences", self.validation_sentences, 2, 4096)
        _whole("seed", self.seed, 0, 2**31 - 1)
        if self.max_seconds is not None:
            _real("time limit (seconds)", self.max_seconds, 1.0, 7 * 24 * 3600.0)

    @property
    def windows_per_step(self) -> int:
        return self.tokens_per_step // self.seq_len

    @property
    def train_norms(self) -> bool:
        return self.layers == "compressed+norms"

    @property
    def label(self) -> str:
        """'+ recovery 150 steps': what every recovered result is called beside its setting."""
        return f"+ recovery {self.steps} steps"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RecoveryConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def check_recoverable(config: RunConfig) -> None:
    """Refuse settings recovery cannot train, before anything is loaded (ConfigError)."""
    if config.prune is None and config.quant is None:
        raise ConfigError("nothing to recover: the setting neither prunes nor quantizes; choose a prune ratio or "
                          "a bit width")
    if config.quant is not None and (config.quant.format != "int" or config.quant.rotate != "none"):
        raise ConfigError(f"recovery trains the integer grid (straight-through rounding); {config.quant.label} "
                          "has no trainable path: choose --format int without --rotate")
    if config.quant is not None and config.quant.storage == "fake":
        raise ConfigError("recovery needs packed storage: fake quantization holds dense floats with no grid to "
                          "train on; drop the fake option")
