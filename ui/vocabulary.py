"""The dashboard's shared widget vocabulary: what every page offers and how it is labelled."""
from __future__ import annotations

KEEP = "session"  # ``persist_state``: widget values survive page switches
GROUP_SIZES = (32, 64, 128, 256)
SCALE_CHOICES = ("per-channel", *GROUP_SIZES)  # "Scale per" selectors; the Compress page adds per-tensor


def group_label(value: int | str) -> str:
    """``groups of 64`` for a group size; other choices ('per-channel', 'per-tensor') as they are."""
    return f"groups of {value}" if isinstance(value, int) else value
