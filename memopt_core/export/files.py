"""Where an export is written: never over something that exists, never half-done.

Every writer fills a hidden staging folder next to the destination and renames it into place at
the end, so a crash or an error leaves nothing that looks like a model.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gguf
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

from memopt_core.errors import ConfigError, ModelLoadError
from memopt_core.paths import user_path


def check_destination(directory: str | os.PathLike) -> Path:
    """The resolved output folder; a one-line error when anything already exists there."""
    final = user_path(directory, "export folder").resolve()
    if final.exists():
        raise ConfigError(f"{str(final)!r} already exists; give a new folder for the export (nothing was written)")
    if final.parent.exists() and not final.parent.is_dir():
        raise ConfigError(f"{str(final.parent)!r} is a file, not a folder")
    return final


@contextmanager
def staged_folder(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success it becomes ``directory`` (renamed), on error it is removed."""
    final = check_destination(directory)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    except OSError as error:
        raise ModelLoadError(f"cannot write the export in {str(final)!r}: {error.strerror or error}") from None
    try:
        yield staging
        if final.exists():  # appeared while we wrote: never replace someone else's files
            raise ConfigError(f"{str(final)!r} appeared while the export was written; nothing was replaced")
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def listing(folder: Path) -> list[dict]:
    """Every file under ``folder``: path and bytes, sorted by path."""
    return [{"path": str(p), "bytes": p.stat().st_size} for p in sorted(folder.rglob("*")) if p.is_file()]


def tensor_bytes(folder: Path, fmt: str) -> int:
    """Bytes of the weights themselves, without metadata, tokenizer or config: GGUF tensor data
    (by GGUFReader), the safetensors file less its JSON header, or the ONNX initializers' data (the
    graph protobuf, its nodes and names, counts as metadata)."""
    if fmt == "gguf":
        return sum(int(t.n_bytes) for path in folder.glob("*.gguf") for t in gguf.GGUFReader(str(path)).tensors)
    if fmt == "compressed-tensors":
        total = 0
        for path in folder.glob("*.safetensors"):
            with open(path, "rb") as handle:
                header = int.from_bytes(handle.read(8), "little")
            total += path.stat().st_size - 8 - header
        return total
    return sum(_onnx_initializer_bytes(path) for path in folder.glob("*.onnx"))


def _onnx_initializer_bytes(path: Path) -> int:
    """Data bytes of the initializers of the ONNX model at ``path``, inline or in external files."""
    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            external = {entry.key: entry.value for entry in tensor.external_data}
            if "length" not in external:  # a writer may leave it out: read the tensor to size it
                load_external_data_for_tensor(tensor, str(path.parent))
                total += numpy_helper.to_array(tensor).nbytes
            else:
                total += int(external["length"])
        else:
            total += numpy_helper.to_array(tensor).nbytes
    return total
