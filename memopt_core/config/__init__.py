"""Frozen, self-validating settings. A config that exists is a config that is valid.

Each dataclass checks itself in ``__post_init__`` and raises :class:`ConfigError` with a
one-line message naming the bad value and the allowed ones. The parts: the allowed values
(``choices.py``), the model and its target layers (``model.py``), pruning and quantization
(``compression.py``), evaluation (``evaluation.py``), calibration and the solver
(``calibration.py``), one run (``run.py``), and where tensors and settings run (``execution.py``).
Everything is importable from ``memopt_core.config``.
"""
from memopt_core.config.calibration import CalibConfig, SolverConfig
from memopt_core.config.choices import (BUNDLED_MODELS, BUNDLED_TEXTS, COMPUTE_DTYPES, DEVICES, DTYPES, FORMAT_BITS,
                                        FORMAT_BLOCKS, GRANULARITIES, MAX_PRUNE_RATIO, PRUNE_METHODS, PRUNE_PATTERNS,
                                        QUANT_BITS, QUANT_FORMATS, QUANT_METHODS, RANGE_METHODS, ROTATIONS, STORAGES,
                                        ZERO_POINTS)
from memopt_core.config.compression import PruneConfig, QuantConfig, needs_calibration
from memopt_core.config.evaluation import EvalConfig
from memopt_core.config.execution import ClusterConfig, OffloadConfig
from memopt_core.config.model import ModelSpec, TargetConfig
from memopt_core.config.run import RunConfig

__all__ = ["BUNDLED_MODELS", "BUNDLED_TEXTS", "COMPUTE_DTYPES", "DEVICES", "DTYPES", "FORMAT_BITS", "FORMAT_BLOCKS",
           "GRANULARITIES", "MAX_PRUNE_RATIO", "PRUNE_METHODS", "PRUNE_PATTERNS", "QUANT_BITS", "QUANT_FORMATS",
           "QUANT_METHODS", "RANGE_METHODS", "ROTATIONS", "STORAGES", "ZERO_POINTS", "CalibConfig", "ClusterConfig",
           "EvalConfig", "ModelSpec", "OffloadConfig", "PruneConfig", "QuantConfig", "RunConfig", "SolverConfig",
           "TargetConfig", "needs_calibration"]
