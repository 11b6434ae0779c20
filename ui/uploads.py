"""Uploaded files, validated. The uploaded name is only ever displayed, never used as a path:
text is written to a file this module names (a hash of its bytes) inside the memopt cache."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from memopt_core.errors import DataError
from memopt_core.loading.cache import cache_dir
from memopt_core.texts import load_text

MAX_TEXT_BYTES = 5_000_000  # the limit memopt_core.texts.load_text applies to user files
MAX_CONFIG_BYTES = 1_000_000  # a config.json is a few kB; anything near this is not one


def _check_size(name: str, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise DataError(f"the uploaded file {name!r} has {len(data):,} bytes; the limit is {limit:,} "
                        f"({limit / 1e6:.0f} MB): upload a shorter file")


def upload_folder() -> Path:
    folder = cache_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_text_upload(name: str, data: bytes) -> str:
    """Write an uploaded evaluation text to a file named by its hash and check it with
    ``datasets.load_text`` (UTF-8, not empty, under 5 MB). Returns the path for EvalConfig.text."""
    _check_size(name, data, MAX_TEXT_BYTES)
    path = upload_folder() / f"{hashlib.sha256(data).hexdigest()[:24]}.txt"
    if not path.is_file():
        # Written beside its final name and renamed, so a reader never sees half a file.
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    try:
        load_text(str(path), max_bytes=MAX_TEXT_BYTES)
    except DataError as error:
        path.unlink(missing_ok=True)
        message = str(error).replace(f"evaluation text {str(path)!r}", f"the uploaded file {name!r}")
        raise DataError(message.replace(repr(str(path)), repr(name))) from None
    return str(path)


def read_config_upload(name: str, data: bytes) -> dict:
    """The JSON object of an uploaded config.json; DataError for other bytes. Fields are checked
    afterwards by ``planner.load_config``."""
    _check_size(name, data, MAX_CONFIG_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"the uploaded file {name!r} is not UTF-8 text (bad byte at position {error.start}); "
                        "upload a model's config.json") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"the uploaded file {name!r} is not valid JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(config, dict):
        raise DataError(f"the uploaded file {name!r} holds a JSON {type(config).__name__}, not the object of a "
                        "config.json")
    return config
