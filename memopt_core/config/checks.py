"""The checks every config runs in ``__post_init__``: a failure is a one-line :class:`ConfigError`."""
from __future__ import annotations

from memopt_core.errors import ConfigError, choices


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(name: str, value, allowed) -> None:
    require(value in allowed, f"{name} {value!r} is not supported; choose {choices(allowed)}")


def require_number(name: str, value, kind=(int, float)) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    require(ok, f"{name} must be a number, got {value!r}")
