"""Compressed models saved under the memopt cache (``<cache>/saved/<name>``), and zips of them.

A folder counts as a saved model when it holds memopt's manifest (``memopt.json``); the folder
itself is the record, so the Runs page lists what is on disk, whoever saved it."""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from memopt_core.config import RunConfig
from memopt_core.loading.cache import cache_dir

MANIFEST = "memopt.json"  # memopt_core.loading.saved.MANIFEST; not imported here, that module loads torch


def saved_root() -> Path:
    return cache_dir() / "saved"


def folder_name(result: dict[str, Any]) -> str:
    """``<model>-<setting>`` with only safe characters (built from our own labels, never user text)."""
    config = RunConfig.from_dict(result["config"])
    text = f"{result['model']['name']}-{config.label}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:120]


class _StoredResult:
    """What ``save_compressed`` reads from a RunResult (``to_dict``), for a result dict from the store."""

    def __init__(self, data: dict[str, Any]):
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)


def save_model(bench, result: dict[str, Any]) -> Path:
    """Compress a copy of ``bench``'s original at ``result``'s setting and save it; returns the folder."""
    from memopt_core.loading.saved import save_compressed  # loads torch: only when a user saves

    config = RunConfig.from_dict(result["config"])
    compressed, _ = bench.compress(config)
    return save_compressed(compressed, bench.loaded, _StoredResult(result), saved_root() / folder_name(result))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def list_saved() -> list[dict[str, Any]]:
    """Saved models, newest first: name, path, base model, setting, bytes on disk, saved time."""
    root = saved_root()
    rows = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        manifest_path = folder / MANIFEST
        if not folder.is_dir() or not manifest_path.is_file():
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a damaged save is not offered for download
        run = manifest.get("run", {})
        config = run.get("config", {})
        setting = RunConfig.from_dict(config).label if config else "?"
        rows.append({"name": folder.name, "path": str(folder), "base model": manifest["base_model"]["name"],
                     "setting": setting, "simulated": manifest.get("simulated", False),
                     "size_mib": _folder_bytes(folder) / 2**20, "saved": manifest_path.stat().st_mtime})
    return sorted(rows, key=lambda row: row["saved"], reverse=True)


def zip_folder(folder: str | Path) -> io.BufferedReader:
    """``folder`` as a zip (entries under the folder's name) in a temporary file, open for reading
    at offset 0. A reader, not the writable temporary file: ``st.download_button`` takes bytes,
    ``BytesIO`` or ``BufferedReader``, and refuses a read-write ``BufferedRandom``."""
    folder = Path(folder)
    with tempfile.NamedTemporaryFile(suffix=".zip", delete=False) as archive:
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zipped.write(path, Path(folder.name) / path.relative_to(folder))
    reader = open(archive.name, "rb")
    os.unlink(archive.name)  # the open reader keeps the bytes until it is closed
    return reader
