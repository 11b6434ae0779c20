"""The dashboard's shared widget vocabulary: what every page offers and how it is labelled."""
from __future__ import annotations

from memopt_core.primitives.formats.info import FORMAT_INFO

KEEP = "session"  # ``persist_state``: widget values survive page switches
GROUP_SIZES = (32, 64, 128, 256)
SCALE_CHOICES = ("per-channel", *GROUP_SIZES)  # "Scale per" selectors; the Compress page adds per-tensor


def group_label(value: int | str) -> str:
    """``groups of 64`` for a group size; other choices ('per-channel', 'per-tensor') as they are."""
    return f"groups of {value}" if isinstance(value, int) else value


RANGE_LABELS = {"minmax": "min-max", "clip-search": "clip search", "percentile": "percentile 99.9",
                "entropy": "entropy (KL)"}


def format_choice_label(fmt: str) -> str:
    """'integer grid (RTN, GPTQ)' or the format's title, e.g. 'NF4 (QLoRA, bitsandbytes)'."""
    return "integer grid (RTN, GPTQ)" if fmt == "int" else FORMAT_INFO[fmt].title
