"""Paths a user types (CLI flags, dashboard fields), checked once so odd names give one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

from memopt_core.errors import ConfigError


def shown(text: str, limit: int = 80) -> str:
    """``repr`` of a user's value, cut short: a 5,000-character name must not flood the error line."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def user_path(text: str | os.PathLike, what: str) -> Path:
    """``text`` as a Path with ``~`` expanded; ConfigError for a name no file system accepts
    (a NUL character, ``~user`` for an unknown user, a name too long). It need not exist."""
    text = os.fspath(text)
    if "\x00" in text:
        raise ConfigError(f"{what} {shown(text)} contains a NUL character")
    try:
        path = Path(text).expanduser()
        path.exists()  # raises for what the OS refuses outright, e.g. a name too long
    except RuntimeError:  # Path.expanduser: '~someone' who does not exist
        raise ConfigError(f"{what} {shown(text)} starts with '~' but names no user on this machine") from None
    except OSError as error:
        raise ConfigError(f"{what} {shown(text)} is not a usable path: {error.strerror or error}") from None
    return path
