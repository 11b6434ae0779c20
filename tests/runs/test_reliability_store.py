"""The results store survives a process killed at any moment (SIGKILL: no cleanup, no atexit).

After each kill the database must open (integrity_check 'ok'), hold every run that finished exactly
once with a parsable result, and a rerun must complete the grid without losing or changing a row.
Kills land at several points of a real CLI sweep, and, to hit the writes themselves, inside a
helper process that does nothing but write big rows.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memopt_core.cli import main
from memopt_core.errors import DataError
from memopt_core.runs.store import ResultStore

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BITS = "16,8,6,5,4,3,2"
SWEEP = ["sweep", "--model", "tiny-llama", "--bits", BITS, "--seq-len", "32", "--max-tokens", "128",
         "--gen-tokens", "0", "--no-zero-shot"]


def _rows(db: Path) -> int:
    """Rows committed so far, read by a separate connection (0 while the table does not exist)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return 0


def check_database(db: Path) -> dict[str, dict]:
    """Open ``db`` fresh and verify it; returns {key: parsed result}."""
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = connection.execute("SELECT key, result FROM runs").fetchall()
    keys = [key for key, _ in rows]
    assert len(keys) == len(set(keys)), "a run is stored twice"
    return {key: json.loads(blob) for key, blob in rows}


def _kill_sweep(db: Path, when: str) -> int:
    """Start a CLI sweep, SIGKILL it at ``when``; returns the rows seen committed just before the kill."""
    process = subprocess.Popen([sys.executable, "-m", "memopt_core", *SWEEP, "--db", str(db)], env=ENV, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wanted = {"at-start": None, "first-row": 1, "midway": 3}[when]
    seen, deadline = 0, time.time() + 240
    try:
        if wanted is None:
            time.sleep(1.0)  # interpreter and imports: the store may or may not exist yet
        while wanted is not None and seen < wanted and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
            seen = _rows(db)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("when", ["at-start", "first-row", "midway"])
def test_a_sweep_killed_at_any_point_resumes_without_loss(tmp_path, when, capsys):
    db = tmp_path / "runs.db"
    seen = _kill_sweep(db, when)
    before = check_database(db) if db.exists() else {}
    assert len(before) >= seen and len(before) < 7
    code = main([*SWEEP, "--db", str(db), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and len(report["rows"]) == 7
    assert report["from_store"] == len(before) and report["computed"] == 7 - len(before)
    after = check_database(db)
    assert len(after) == 7
    assert all(after[key] == result for key, result in before.items()), "a finished run changed or vanished"


_WRITER = """
import sys
from memopt_core.runs.store import ResultStore

store = ResultStore(sys.argv[1])
start, blob = int(sys.argv[2]), "x" * int(sys.argv[3])
for i in range(start, start + 10_000):
    store.put(f"key-{i}", "model", "identity", f"setting {i}", {"i": i, "blob": blob})
    print(i, flush=True)  # printed only after the commit returned: run i is finished
"""


def _kill_writer(db: Path, start: int, rows_before_kill: int, row_bytes: int, delay_s: float = 0.0) -> list[int]:
    """Run the writer loop, SIGKILL it ``delay_s`` after its ``rows_before_kill``-th commit; returns the
    runs it reported finished. One put of a few MB takes tens of ms (JSON, insert, WAL write, commit),
    so different delays land the kill in different phases of the next write."""
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(start), str(row_bytes)], env=ENV,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    finished = []
    try:
        for line in process.stdout:
            finished.append(int(line))
            if len(finished) >= rows_before_kill:
                time.sleep(delay_s)
                break
    finally:
        process.send_signal(signal.SIGKILL)  # the loop is writing the next row right now
        process.wait()
        # the writer runs ahead of this reader: lines already in the pipe are runs it finished too
        finished += [int(line) for line in process.stdout.read().split()]
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    return finished


@pytest.mark.slow
def test_writes_killed_mid_transaction_lose_no_finished_run(tmp_path):
    """Kills in a row on one database, each in the middle of writing 1-4 MB rows."""
    db, finished = tmp_path / "writes.db", []
    plan = [(1, 4 << 20, 0.0), (3, 1 << 20, 0.004), (5, 2 << 20, 0.012), (2, 4 << 20, 0.02), (8, 1 << 20, 0.008),
            (4, 3 << 20, 0.03), (2, 4 << 20, 0.045), (3, 2 << 20, 0.016)]
    for round_, (count, size, delay) in enumerate(plan):
        finished += _kill_writer(db, start=round_ * 10_000, rows_before_kill=count, row_bytes=size, delay_s=delay)
        stored = check_database(db)
        missing = [i for i in finished if f"key-{i}" not in stored]
        assert missing == [], f"finished runs lost after kill {round_}: {missing}"
        assert all(result["i"] == int(key[4:]) and len(result["blob"]) in (1 << 20, 2 << 20, 3 << 20, 4 << 20)
                   for key, result in stored.items()), "a row was stored half-written"
        # at most the one run in flight at the kill committed without being reported
        assert len(stored) - len(finished) <= round_ + 1
    store = ResultStore(db)
    store.put("key-after", "model", "identity", "setting", {"ok": True})
    assert store.get("key-after") == {"ok": True} and store.count() == len(check_database(db))


def test_a_killed_writer_does_not_disturb_another_writing_at_the_same_time(tmp_path):
    db = tmp_path / "shared.db"
    survivor = subprocess.Popen([sys.executable, "-c", _WRITER.replace("10_000", "40"), str(db), "0",
                                 str(256 << 10)], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    killed = _kill_writer(db, start=100_000, rows_before_kill=6, row_bytes=1 << 20)
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err[-2000:]
    stored = check_database(db)
    assert all(f"key-{i}" in stored for i in range(40)) and all(f"key-{i}" in stored for i in killed)


def test_the_same_run_stored_twice_is_kept_once(tmp_path):
    store = ResultStore(tmp_path / "twice.db")
    store.put("k", "m", "id", "s", {"first": True})
    store.put("k", "m", "id", "s", {"first": False})
    assert store.count() == 1 and store.get("k") == {"first": True}


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 200])
def test_a_file_that_is_not_a_database_is_a_one_line_error(tmp_path, content, capsys):
    db = tmp_path / "garbage.db"
    db.write_bytes(content)
    with pytest.raises(DataError, match="^results database .*garbage.db' cannot be opened"):
        ResultStore(db)
    code = main([*SWEEP, "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: results database ")
