"""The few exceptions memopt raises on purpose.

Every message is one line that names the bad value and, where there are choices, lists
them, so the CLI can print it as is and the dashboard can show it in ``st.error``.
"""
from __future__ import annotations


class MemoptError(Exception):
    """Base class: a known, user-facing failure (never a bug)."""


class ConfigError(MemoptError, ValueError):
    """A setting is out of range or of the wrong kind."""


class ModelLoadError(MemoptError):
    """A model could not be found, fetched or read."""


class UnsupportedModelError(MemoptError):
    """The model loaded but is of a kind memopt cannot evaluate or compress."""


class DeviceError(MemoptError):
    """The requested device is not present on this machine."""


class DataError(MemoptError):
    """An evaluation or calibration text is missing, empty, too short or unreadable."""


class ResourceError(MemoptError):
    """Not enough memory (host or accelerator) for what was asked."""


def choices(values) -> str:
    """Format a list of allowed values for an error message: ``'a', 'b' or 'c'``."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
