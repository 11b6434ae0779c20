"""The original's references kept on disk, so no process scores the original twice.

One safetensors file per key under ``<memopt cache>/references/`` (next to the results store):
the key (a JSON-able dict naming the model's fingerprint and the protocol) is hashed into the file
name and also written into the file's metadata, which is checked on load. A file is written
under a temporary name, flushed and renamed into place (``os.replace``), so a reader sees the old
file or the new one, never half of one. Two processes writing the same key at once both write a
valid file; the last rename wins. A file that cannot be read counts as missing (and is rewritten).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from memopt_core.evaluation.lm_records import LMReference
from memopt_core.loading.cache import cache_dir

_LOG = logging.getLogger("memopt.references")
FORMAT_VERSION = "1"


def key_hash(key: dict[str, Any]) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ReferenceStore:
    """Tensors plus a JSON ``meta`` dict per key, in a folder (default: the cache's ``references``)."""

    def __init__(self, folder: str | Path | None = None):
        if folder is None:
            folder = cache_dir() / "references"
        self.folder = Path(folder)

    def path(self, key: dict[str, Any]) -> Path:
        return self.folder / f"{key_hash(key)}.safetensors"

    def load(self, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """``(tensors, meta)`` stored under ``key``, or None when absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
                if header.get("key") != json.dumps(key, sort_keys=True, default=str):
                    return None
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            return tensors, json.loads(header.get("meta", "{}"))
        except (OSError, SafetensorError, ValueError) as error:
            _LOG.warning("ignoring unreadable reference %s: %s", path, error)
            return None

    def save(self, key: dict[str, Any], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        """Write ``tensors`` (CPU, contiguous copies are made) and ``meta`` under ``key`` atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        temp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        header = {"key": json.dumps(key, sort_keys=True, default=str), "meta": json.dumps(meta, default=str)}
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temp), metadata=header)
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())  # the data reaches the disk before the rename publishes it
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        return final


def reference_tensors(reference: LMReference) -> dict[str, torch.Tensor]:
    """The tensors of an LMReference to save (those it holds)."""
    return {name: value for name, value in reference.tensors().items() if value is not None}


def reference_from_tensors(tensors: dict[str, torch.Tensor]) -> LMReference | None:
    """An LMReference from saved tensors; None when a needed one is missing (an older format)."""
    if not {"targets", "top1", "nll"} <= set(tensors):
        return None
    return LMReference(**tensors)
