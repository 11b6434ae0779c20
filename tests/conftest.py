"""Shared fixtures: tiny random models built from configs (no network, no files)."""
from __future__ import annotations

import os

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
