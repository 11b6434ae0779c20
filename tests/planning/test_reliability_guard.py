"""The memory guard: a model that would not fit in free memory is refused before any weight is read.

Free memory is faked (``guard.available_bytes``) so the tests mean the same on any machine; one
test loads real models with the real free memory, so the guard never refuses what fits.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memopt_core.cli import main
from memopt_core.config import ModelSpec
from memopt_core.errors import ModelLoadError, ResourceError
from memopt_core.loading import models
from memopt_core.loading.models import load_model
from memopt_core.planning import guard
from memopt_core.planning.planner import count_parameters, format_gib, load_preset
from tiny_models import make_tiny_llama

GiB = 2**30


def _fake_free(monkeypatch, free_bytes: int) -> None:
    monkeypatch.setattr(guard, "available_bytes", lambda: free_bytes)


def _big_folder(tmp_path: Path) -> Path:
    """A Llama-3-8B config with a garbage weights file: the guard must stop before the weights are read."""
    folder = tmp_path / "llama-3-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(load_preset("llama-3-8b")))
    (folder / "model.safetensors").write_bytes(b"not read: the guard refuses first")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def test_a_model_larger_than_free_memory_is_refused_with_the_planners_figure(tmp_path, monkeypatch):
    folder = _big_folder(tmp_path)
    _fake_free(monkeypatch, 8 * GiB)
    params = count_parameters(folder).total
    with pytest.raises(ResourceError) as caught:
        load_model(ModelSpec(str(folder), dtype="bfloat16"))
    message = str(caught.value)
    assert f"model 'llama-3-8b' in bfloat16 needs about {format_gib(params * 2)}" in message
    assert f"planner estimate: {params:,} parameters x 2 bytes" in message
    assert "only 8.00 GiB of memory is free" in message
    assert "choose a smaller model, a lower precision (bfloat16), or free memory; or compress it layer by layer" \
        in message  # the offer of the layer-by-layer route, with its cap and peak (tests/planning/test_layer_by_layer_peak.py)
    assert "\n" not in message


def test_the_guard_runs_before_the_weights_are_read(tmp_path, monkeypatch):
    """With the guard out of the way the same folder fails on its garbage weights instead."""
    folder = _big_folder(tmp_path)
    _fake_free(monkeypatch, 8 * GiB)
    monkeypatch.setattr(guard, "check_load_fits", lambda *args, **kwargs: None)
    with pytest.raises(ModelLoadError):
        load_model(ModelSpec(str(folder), dtype="bfloat16"))


def test_a_bundled_tiny_model_is_refused_when_memory_is_short(monkeypatch):
    _fake_free(monkeypatch, 100 * 2**20)
    with pytest.raises(ResourceError, match=r"^model 'tiny-llama' in float32 needs about 0\.01 GiB "
                                            r"\(3,219,776 parameters x 4 bytes\), but only 0\.10 GiB"):
        load_model(ModelSpec("tiny-llama"))


@pytest.mark.slow
def test_real_models_load_with_the_real_free_memory(tmp_path):
    """The guard must not refuse what fits: a bundled and a local tiny model load on this machine."""
    from transformers import AutoTokenizer

    from memopt_core.loading import bundled

    assert load_model(ModelSpec("tiny-llama")).num_params == 3_219_776
    folder = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled.smollm2_tokenizer_folder()).save_pretrained(folder)
    assert load_model(ModelSpec(str(folder))).architecture == "LlamaForCausalLM"


def test_estimate_load_bytes_is_the_planner_count_times_the_dtype_size(tmp_path):
    folder = _big_folder(tmp_path)
    params = count_parameters(folder).total
    assert guard.estimate_load_bytes(folder / "config.json", "float32") == params * 4
    assert guard.estimate_load_bytes(ModelSpec(str(folder), dtype="bfloat16")) == params * 2
    assert guard.estimate_load_bytes(load_preset("llama-3-8b"), torch.float16) == params * 2
    assert guard.estimate_load_bytes(ModelSpec("memopt-test/remote")) is None  # hub: read its config first


def test_check_fits_applies_the_margin_and_accepts_a_function_or_a_number():
    needed = 1 * GiB
    exactly = int(needed * guard.MARGIN_FACTOR) + guard.MARGIN_BYTES
    guard.check_fits(needed, "x", available=exactly)
    guard.check_fits(needed, "x", available=lambda: exactly)
    with pytest.raises(ResourceError, match=r"^a copy needs about 1\.00 GiB, but only 1\.70 GiB"):
        guard.check_fits(needed, "a copy", available=exactly - 1)
    guard.check_fits(None, "unknown size", available=0)  # the planner could not count: do not block


def test_an_absurd_config_is_refused_with_the_planners_rough_bound(tmp_path, monkeypatch):
    config = dict(load_preset("llama-3-8b"), hidden_size=10**7)  # about 8e15 parameters
    folder = _big_folder(tmp_path)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ResourceError, match=r"planner's rough upper bound: 8,016,327,680,000,000 parameters"):
        load_model(ModelSpec(str(folder)))


def test_model_bytes_counts_tied_weights_once(tiny_llama):
    unique = sum(p.numel() * 4 for p in tiny_llama.parameters()) + sum(b.numel() * b.element_size()
                                                                       for b in tiny_llama.buffers())
    assert guard.model_bytes(tiny_llama) == unique
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight


def test_cli_reports_the_refusal_as_one_line(tmp_path, monkeypatch, capsys):
    folder = _big_folder(tmp_path)
    _fake_free(monkeypatch, 8 * GiB)
    code = main(["run", "--model", str(folder), "--bits", "4", "--seq-len", "32", "--max-tokens", "64"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model 'llama-3-8b' in float32 needs about ") and "free memory" in err


# CUDA: out of memory while moving the model is a ResourceError, and the cached blocks are released.

@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend the model goes to cuda:0; record empty_cache calls."""
    emptied = []
    monkeypatch.setattr(models, "resolve_device", lambda name: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    return emptied


def test_cuda_out_of_memory_while_loading_is_a_resource_error(fake_cuda, monkeypatch):
    real_to = torch.nn.Module.to

    def to(module, *args, **kwargs):
        if any(isinstance(a, torch.device) and a.type == "cuda" for a in args):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(guard, "device_available_bytes", lambda device: 100 * GiB)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    with pytest.raises(ResourceError, match=r"^moving model 'tiny-llama' in float32 ran out of memory on cuda:0; "
                                            r"choose a smaller model"):
        load_model(ModelSpec("tiny-llama", device="cuda"))
    assert fake_cuda == [True]


def test_a_model_larger_than_the_free_accelerator_memory_is_refused(fake_cuda, monkeypatch):
    monkeypatch.setattr(guard, "device_available_bytes", lambda device: 64 * 2**20)
    with pytest.raises(ResourceError, match=r"^model 'tiny-llama' in float32 on cuda:0 needs about .* only 0\.06 GiB"):
        load_model(ModelSpec("tiny-llama", device="cuda"))


def test_a_compressed_copy_is_refused_when_memory_is_short(monkeypatch):
    from memopt_core.config import QuantConfig, RunConfig
    from memopt_core.runs.workbench import Workbench

    bench = Workbench.load(ModelSpec("tiny-llama"))
    monkeypatch.setattr(guard, "device_available_bytes", lambda device: 100 * 2**20)
    with pytest.raises(ResourceError, match=r"^a compressed copy of 'tiny-llama' needs about 0\.01 GiB"):
        bench.compress(RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(bits=4)))
