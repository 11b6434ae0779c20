"""The model cache on a cold start: concurrent processes convert SmolLM2 once, and a conversion killed
midway leaves nothing that a later load mistakes for a model.

These tests use the real bundled GGUF and their own empty cache folder (``MEMOPT_CACHE``), so each
pays for a conversion (about 20-30 s of CPU); the three-process test is the only one of its kind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memopt_core.config import ModelSpec
from memopt_core.loading.models import load_model

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parents[2]
RUN = ["-m", "memopt_core", "run", "--model", "smollm2-135m", "--bits", "8", "--max-tokens", "256", "--seq-len",
       "128", "--gen-tokens", "0", "--no-zero-shot", "--json"]


def _env(cache_folder: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "MEMOPT_CACHE": str(cache_folder), "HF_HUB_OFFLINE": "1"}


def _leftovers(cache_folder: Path) -> list[str]:
    """Temporary build folders anywhere in the cache (their names start with '.<final>.tmp-')."""
    return sorted(str(p.relative_to(cache_folder)) for p in cache_folder.rglob("*") if ".tmp-" in p.name)


def _folders(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.is_dir())


def test_three_processes_on_an_empty_cache_convert_once_and_agree(tmp_path):
    cache_folder = tmp_path / "cache"
    processes = [subprocess.Popen([sys.executable, *RUN], env=_env(cache_folder), cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    results = [json.loads(out) for out, _ in outputs]
    baselines = {result["baseline"]["perplexity"] for result in results}
    assert len(baselines) == 1, f"the processes disagree on the baseline: {baselines}"
    assert 1.0 < baselines.pop() < 100.0  # a real model, not random weights (those give ~50,000)
    assert _folders(cache_folder / "models") == ["smollm2-135m"]
    assert _folders(cache_folder / "tokenizers") == ["smollm2"]
    assert _leftovers(cache_folder) == []
    model_files = {p.name for p in (cache_folder / "models" / "smollm2-135m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files


_CONVERT = "from memopt_core.loading.bundled import smollm2_folder; smollm2_folder()"


def _kill_conversion(cache_folder: Path, ready) -> Path:
    """Start a conversion, SIGKILL it once ``ready(temp_folder)`` holds; returns the temp folder left."""
    process = subprocess.Popen([sys.executable, "-c", _CONVERT], env=_env(cache_folder), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models, temp, deadline = cache_folder / "models", None, time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            temps = list(models.glob(".smollm2-135m.tmp-*")) if models.is_dir() else []
            if temps and ready(temps[0]):
                temp = temps[0]
                break
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert temp is not None and process.returncode == -signal.SIGKILL, "the conversion was not caught midway"
    return temp


def test_a_conversion_killed_midway_is_never_mistaken_for_a_model(tmp_path, monkeypatch):
    cache_folder = tmp_path / "cache"
    monkeypatch.setenv("MEMOPT_CACHE", str(cache_folder))
    final = cache_folder / "models" / "smollm2-135m"
    # Killed while de-quantizing the GGUF (the temp folder exists, still empty) ...
    first = _kill_conversion(cache_folder, ready=lambda temp: True)
    assert not final.exists() and first.exists()
    # ... and again while writing the weights (a partial model.safetensors in the temp folder).
    second = _kill_conversion(cache_folder, ready=lambda temp: (temp / "model.safetensors").exists())
    assert not final.exists() and second.exists()

    loaded = load_model(ModelSpec("smollm2-135m"))  # the dead writers' locks were released by the kernel
    assert loaded.name == "SmolLM2-135M-Instruct" and loaded.num_params == 134_515_008
    assert _folders(cache_folder / "models") == ["smollm2-135m"]
    assert _leftovers(cache_folder) == [], "stale temp folders were not cleaned up"
