"""The results store: every finished run in a local SQLite file (stdlib sqlite3, WAL mode).

A run is keyed by the model's identity (name plus a hash of its weights or files), the settings,
the evaluation text's hash and the protocol, so an interrupted sweep resumes where it stopped and
a finished one answers from here without loading the model. Each run is one committed
transaction: a process killed mid-write leaves the previous state, never half a row.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from memopt_core.errors import DataError, choices
from memopt_core.loading.cache import cache_dir
from memopt_core.paths import user_path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    model_identity TEXT NOT NULL,
    setting TEXT NOT NULL,
    sweep TEXT,
    created REAL NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_model ON runs(model);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs(sweep);
"""


def run_key(model_identity: str, settings: dict[str, Any], eval_identity: dict[str, Any]) -> str:
    """A stable hash of everything that determines a run's figures."""
    blob = json.dumps({"model": model_identity, "settings": settings, "eval": eval_identity},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def default_db_path() -> Path:
    return cache_dir() / "results.db"


LOCK_WAIT_S = 30.0


def _when_unlocked(step: Callable[[], Any]) -> Any:
    """Run ``step``, retrying while another process holds the database. SQLite's busy timeout
    covers reads and writes, but switching a new file to WAL or creating the schema while another
    process does the same can answer "database is locked" at once."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return step()
        except sqlite3.OperationalError as error:
            transient = "locked" in str(error) or "busy" in str(error)
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


JOURNAL_ENV = "MEMOPT_STORE_JOURNAL"
JOURNALS = ("wal", "delete")


def journal_mode() -> str:
    """WAL (default): readers never wait for the writer, but every process must be on one machine.
    ``MEMOPT_STORE_JOURNAL=delete`` (SQLite's rollback journal) for a database on a network file
    system shared by the workers of several machines: WAL's shared memory does not cross machines."""
    mode = os.environ.get(JOURNAL_ENV, "wal").strip().lower()
    if mode not in JOURNALS:
        raise DataError(f"{JOURNAL_ENV}={mode!r} is not supported; choose {choices(JOURNALS)}")
    return mode.upper()


class ResultStore:
    """A thread-safe handle on the results database (one connection per thread)."""

    def __init__(self, path: str | Path | None = None):
        self.path = user_path(path, "results database") if path is not None else default_db_path()
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                _when_unlocked(lambda: db.executescript(_SCHEMA))
        except (sqlite3.DatabaseError, OSError) as error:
            raise DataError(f"results database {str(self.path)!r} cannot be opened: {error}") from None

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=LOCK_WAIT_S)
            mode = journal_mode()
            _when_unlocked(lambda: db.execute(f"PRAGMA journal_mode={mode}"))
            db.execute("PRAGMA synchronous=NORMAL" if mode == "WAL" else "PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._connect().execute("SELECT result FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, model: str, model_identity: str, setting: str, result: dict[str, Any],
            sweep: str | None = None) -> None:
        """Store one finished run atomically; a second put of the same key keeps the first."""
        blob = json.dumps(result, default=str)
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO runs(key, model, model_identity, setting, sweep, created, result) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, model, model_identity, setting, sweep, time.time(), blob))

    def rows(self, model: str | None = None, sweep: str | None = None) -> list[dict[str, Any]]:
        """Stored runs, newest first, as dicts with ``key``, ``model``, ``setting``, ``sweep``,
        ``created`` and the parsed ``result``."""
        query, params = "SELECT key, model, setting, sweep, created, result FROM runs", []
        clauses = []
        for column, value in (("model", model), ("sweep", sweep)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        cursor = self._connect().execute(query + " ORDER BY created DESC", params)
        return [{"key": k, "model": m, "setting": s, "sweep": sw, "created": c, "result": json.loads(r)}
                for k, m, s, sw, c, r in cursor.fetchall()]

    def count(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def models(self) -> list[str]:
        return [r[0] for r in self._connect().execute("SELECT DISTINCT model FROM runs ORDER BY model")]

    def sweeps(self) -> list[str]:
        return [r[0] for r in self._connect().execute(
            "SELECT DISTINCT sweep FROM runs WHERE sweep IS NOT NULL ORDER BY sweep")]

    def delete(self, keys: Iterable[str]) -> None:
        with self._connect() as db:
            db.executemany("DELETE FROM runs WHERE key = ?", [(k,) for k in keys])

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
