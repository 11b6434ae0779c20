"""The on-disk cache folder and a way to fill a sub-folder of it exactly once.

A cached folder is complete if and only if it exists: it is built under a temporary name next to
its final place and renamed into place (``os.replace``, atomic on one file system) when the build
succeeds. A file lock serialises builders of the same folder across threads and processes, so
on a cold cache the first builds while the others wait and then find the finished folder.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from memopt_core.errors import MemoptError

DEFAULT_LOCK_TIMEOUT_S = 1800.0


def cache_dir() -> Path:
    """The memopt cache folder: ``$MEMOPT_CACHE`` if set, else ``~/.cache/memopt`` (created on demand)."""
    root = os.environ.get("MEMOPT_CACHE") or os.path.join("~", ".cache", "memopt")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _temp_prefix(final: Path) -> str:
    # Hidden and named after the target, so stale ones are easy to find and never look finished.
    return f".{final.name}.tmp-"


def _sync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk before the rename publishes it.

    A killed process loses nothing the kernel already holds, but after a power cut or a crashed
    machine the rename could reach the disk before the data, leaving a "finished" folder of empty
    files; syncing first rules that out.
    """
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _sync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename itself); not every platform can open a folder."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _remove_stale_temps(final: Path) -> None:
    """Delete temp folders left by writers that died; only called while holding the lock."""
    for stale in final.parent.glob(_temp_prefix(final) + "*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_directory(final: Path, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[Path | None]:
    """Build the folder ``final`` atomically, at most once.

    Yields a fresh, empty temporary folder beside ``final`` to fill; when the block ends without
    an exception that folder is renamed to ``final``. If the block raises, the temporary folder
    is removed and ``final`` is not created. Yields ``None`` when ``final`` already exists
    (typically built by another process while this one waited for the lock): nothing to do.

    Raises MemoptError if another builder holds the lock for longer than ``timeout_s`` seconds.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(final.parent / f"{final.name}.lock"), timeout=timeout_s)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise MemoptError(f"waited {timeout_s:.0f} s for another process to finish writing {final}; "
                          f"if none is running, delete {lock.lock_file}") from None
    try:
        if final.exists():
            yield None
            return
        _remove_stale_temps(final)
        temp = final.parent / f"{_temp_prefix(final)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            yield temp
            _sync_tree(temp)
            os.replace(temp, final)
            _sync_dir(final.parent)
        finally:
            shutil.rmtree(temp, ignore_errors=True)  # a no-op after a successful rename
    finally:
        lock.release()


def ensure_directory(final: Path, build: Callable[[Path], None]) -> Path:
    """Return ``final``, calling ``build(temp_folder)`` first if it does not exist yet.

    ``build`` writes the folder's contents into the folder it is given; see :func:`atomic_directory`.
    """
    final = Path(final)
    if final.exists():  # fast path: no lock needed to read a finished folder
        return final
    with atomic_directory(final) as temp:
        if temp is not None:
            build(temp)
    return final
