"""Shared fixtures: tiny random models built from configs (no network, no files)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tiny_models import make_tiny_bert, make_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write to the user's cache unless they point MEMOPT_CACHE elsewhere themselves.

    The bundled SmolLM2 conversion is shared across tests through a session-wide folder."""
    shared = os.environ.get("MEMOPT_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "memopt-cache")
    monkeypatch.setenv("MEMOPT_CACHE", shared)


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path, monkeypatch):
    """Every test runs in its own temporary working directory, so a relative path it (or the code
    under test) writes lands there, never in the checkout."""
    monkeypatch.chdir(tmp_path)


CHECKOUT = Path(__file__).resolve().parents[1]


def _untracked() -> set[str] | None:
    """Files git does not track or ignore in the checkout; None outside a git checkout."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=CHECKOUT,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return {line[3:] for line in done.stdout.splitlines() if line.startswith("?? ")}


def pytest_sessionstart(session):
    session.config.stash[_BEFORE] = _untracked()


def pytest_sessionfinish(session, exitstatus):
    before, after = session.config.stash.get(_BEFORE, None), _untracked()
    if before is None or after is None:
        return
    written = sorted(after - before)
    if written:  # a test wrote into the checkout: fail the run and say where
        session.config.get_terminal_writer().line(f"tests wrote into the checkout: {written[:5]}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set]()
