"""One compression run: a model, optional pruning and quantization, evaluation and calibration."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from memopt_core.config.calibration import CalibConfig
from memopt_core.config.checks import require
from memopt_core.config.compression import PruneConfig, QuantConfig, needs_calibration
from memopt_core.config.evaluation import EvalConfig
from memopt_core.config.model import ModelSpec, TargetConfig


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
        require(self.prune is None or self.quant is None or self.quant.rotate == "none",
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
