"""Calibration data and the GPTQ/SparseGPT solver settings."""
from __future__ import annotations

from dataclasses import dataclass, field

from memopt_core.config.checks import require, require_number


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
        require(isinstance(self.act_order, bool) and isinstance(self.static_groups, bool),
                 "act_order and static_groups must be true or false")
        require(isinstance(self.damp, (int, float)) and not isinstance(self.damp, bool) and 0.0 <= self.damp <= 1.0,
                 f"GPTQ dampening {self.damp!r} is out of range; choose 0 to 1 (default 0.01)")
        require(isinstance(self.block_size, int) and not isinstance(self.block_size, bool) and self.block_size >= 1,
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
        require(isinstance(self.solver, SolverConfig), f"solver must be a SolverConfig, got {self.solver!r}")
        require(isinstance(self.text, str) and self.text.strip() != "",
                 "calibration text must be 'both', 'wikipedia', 'news' or a file path")
        require_number("calibration samples", self.samples, int)
        require_number("calibration length", self.seq_len, int)
        require(1 <= self.samples <= 4096, f"calibration samples {self.samples} is out of range; choose 1 to 4096")
        require(8 <= self.seq_len <= 32768, f"calibration length {self.seq_len} is out of range; choose 8 to 32768")
