"""The formats comparison: every number format at its natural bits per weight, plus the integer
grids they are usually compared with (shared by the Formats page and bench_formats)."""
from __future__ import annotations

from memopt_core.config import QuantConfig

_G32 = dict(granularity="group", group_size=32)
_G64 = dict(granularity="group", group_size=64)

NATURAL_FORMATS: tuple[QuantConfig, ...] = (
    QuantConfig(bits=4, **_G32), QuantConfig(bits=4, **_G64), QuantConfig(bits=4, symmetric=False, **_G32),
    QuantConfig(format="nf4"), QuantConfig(format="nf4", double_quant=True), QuantConfig(format="mxfp4"),
    QuantConfig(format="nvfp4"), QuantConfig(format="q4_k"), QuantConfig(format="q3_k"), QuantConfig(format="q2_k"),
    QuantConfig(format="q6_k"), QuantConfig(format="fp8-e4m3"), QuantConfig(format="fp8-e5m2"), QuantConfig(bits=8),
    QuantConfig(bits=3, **_G64))
ROTATION_PAIRS: tuple[QuantConfig, ...] = (QuantConfig(bits=4), QuantConfig(bits=4, **_G64), QuantConfig(bits=3, **_G64),
                                           QuantConfig(bits=3))


def by_label(configs=NATURAL_FORMATS) -> dict[str, QuantConfig]:
    """Label -> config, in order."""
    return {config.label: config for config in configs}
