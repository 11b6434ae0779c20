"""Loading: devices, the cache folder, bundled tiny models, local folders and the hub path (offline)."""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from memopt_core.config import ModelSpec
from memopt_core.errors import DeviceError, ModelLoadError, UnsupportedModelError
from memopt_core.loading import bundled, cache, devices
from memopt_core.loading.models import LoadedModel, load_model, weights_checksum
from tiny_models import make_tiny_bert, make_tiny_llama


@pytest.fixture
def cpu_only(monkeypatch):
    """Pretend no accelerator exists, so the device tests mean the same on any machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def _save_with_tokenizer(model, folder: Path, tokenizer_folder: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)
    return folder


def _tiny_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        vocab_size=30522, num_labels=2)
    return BertForSequenceClassification(config).eval()


# devices ---------------------------------------------------------------------------------------

def test_absent_cuda_is_an_error_naming_what_exists(cpu_only):
    with pytest.raises(DeviceError, match=r"^device 'cuda' is not available on this machine; available: 'cpu'$"):
        devices.resolve_device("cuda")
    with pytest.raises(DeviceError, match="'mps' is not available"):
        devices.resolve_device("mps")
    assert devices.available_devices() == ["cpu"]


def test_auto_and_cpu_resolve_to_the_cpu_without_accelerators(cpu_only):
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_cuda_index_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.available_devices() == ["cpu", "cuda", "cuda:1"]
    with pytest.raises(DeviceError, match="'cuda:2' is not available.*'cpu', 'cuda' or 'cuda:1'"):
        devices.resolve_device("cuda:2")


def test_unknown_device_name_lists_the_choices():
    with pytest.raises(DeviceError, match="'tpu' is not supported; choose 'cpu'"):
        devices.resolve_device("tpu")


def test_load_model_checks_the_device_before_loading(cpu_only, monkeypatch):
    monkeypatch.setattr(bundled, "build_tiny", lambda key: pytest.fail("loaded despite a bad device"))
    with pytest.raises(DeviceError):
        load_model(ModelSpec("tiny-llama", device="cuda"))


# cache -----------------------------------------------------------------------------------------

def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMOPT_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_atomic_directory_leaves_nothing_when_the_block_fails(tmp_path):
    final = tmp_path / "thing"
    with pytest.raises(RuntimeError, match="boom"):
        with cache.atomic_directory(final) as temp:
            (temp / "half.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_atomic_directory_renames_into_place_and_then_yields_none(tmp_path):
    final = tmp_path / "thing"
    with cache.atomic_directory(final) as temp:
        assert temp.parent == tmp_path and temp != final
        (temp / "data.txt").write_text("done")
    assert (final / "data.txt").read_text() == "done"
    with cache.atomic_directory(final) as again:
        assert again is None


def test_a_killed_writer_leaves_a_temp_folder_that_is_never_the_result(tmp_path):
    final = tmp_path / "thing"
    script = ("import os, sys; from pathlib import Path; from memopt_core.loading.cache import atomic_directory\n"
              "with atomic_directory(Path(sys.argv[1])) as t:\n"
              "    (t / 'half.txt').write_text('partial'); os._exit(9)\n")
    result = subprocess.run([sys.executable, "-c", script, str(final)], cwd=Path(__file__).parents[2])
    assert result.returncode == 9
    stale = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not final.exists() and len(stale) == 1 and stale[0].name.startswith(".thing.tmp-")
    built = cache.ensure_directory(final, lambda t: (t / "data.txt").write_text("good"))
    assert (built / "data.txt").read_text() == "good"
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == [final]


def test_two_threads_on_a_cold_cache_build_once_and_share_the_folder(tmp_path):
    final, calls, results = tmp_path / "shared", [], []

    def build(temp: Path) -> None:
        calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other thread to arrive and wait on the lock
        (temp / "who.txt").write_text(str(threading.get_ident()))

    threads = [threading.Thread(target=lambda: results.append(cache.ensure_directory(final, build)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results == [final, final]
    assert (final / "who.txt").read_text() == str(calls[0])


def _race_worker(final: str, counter: str) -> str:
    def build(temp: Path) -> None:
        with open(counter, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (temp / "who.txt").write_text(str(os.getpid()))

    return str(cache.ensure_directory(Path(final), build))


@pytest.mark.slow
def test_two_processes_on_a_cold_cache_build_once_and_share_the_folder(tmp_path):
    final, counter = tmp_path / "shared", tmp_path / "builds.txt"
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.starmap(_race_worker, [(str(final), str(counter))] * 2)
    builders = counter.read_text().split()
    assert results == [str(final)] * 2 and len(builders) == 1
    assert (final / "who.txt").read_text() == builders[0]


# bundled tiny models -----------------------------------------------------------------------------

@pytest.mark.parametrize("key, kind, architecture", [("tiny-llama", "causal-lm", "LlamaForCausalLM"),
                                                     ("tiny-bert", "encoder", "BertModel")])
def test_tiny_bundled_models_load_labelled_random(key, kind, architecture):
    loaded = load_model(ModelSpec(key))
    assert isinstance(loaded, LoadedModel)
    assert (loaded.kind, loaded.architecture, loaded.is_random) == (kind, architecture, True)
    assert loaded.label == f"{key} (random weights)"
    assert loaded.model.config.vocab_size == len(loaded.tokenizer)
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())
    listed = {m["key"]: m for m in bundled.bundled_models()}
    assert loaded.num_params == listed[key]["params"] and listed[key]["is_random"]


def test_tiny_models_are_reproducible_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = load_model(ModelSpec("tiny-llama"))
    assert torch.equal(torch.rand(3), expected)
    assert weights_checksum(first.model) == weights_checksum(load_model(ModelSpec("tiny-llama")).model)


def test_tiny_model_loads_in_the_requested_dtype():
    loaded = load_model(ModelSpec("tiny-bert", dtype="bfloat16"))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_minilm_is_a_real_encoder():
    loaded = load_model(ModelSpec("minilm-l6"))
    assert (loaded.kind, loaded.architecture, loaded.is_random) == ("encoder", "BertModel", False)
    assert loaded.label == "all-MiniLM-L6-v2" and loaded.num_params == 22_713_216
    assert len(loaded.tokenizer) == 30522


def test_bundled_list_covers_every_bundled_key():
    from memopt_core.config import BUNDLED_MODELS

    models = bundled.bundled_models()
    assert [m["key"] for m in models] == list(BUNDLED_MODELS)
    assert all(set(m) >= {"key", "kind", "params", "description", "is_random", "license"} for m in models)


# local folders -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_saved_causal_lm_folder_loads_back_identical(tmp_path):
    original = make_tiny_llama(vocab_size=49152)
    folder = _save_with_tokenizer(original, tmp_path / "llama", bundled.smollm2_tokenizer_folder())
    loaded = load_model(ModelSpec(str(folder)))
    assert (loaded.kind, loaded.architecture, loaded.is_random) == ("causal-lm", "LlamaForCausalLM", False)
    assert loaded.name == "llama" and str(folder) in loaded.source
    assert weights_checksum(loaded.model) == weights_checksum(original)


def test_saved_encoder_folder_loads_back_identical(tmp_path):
    original = make_tiny_bert(vocab_size=30522)
    folder = _save_with_tokenizer(original, tmp_path / "bert", bundled.minilm_folder())
    loaded = load_model(ModelSpec(str(folder)))
    assert (loaded.kind, loaded.architecture) == ("encoder", "BertModel")
    assert weights_checksum(loaded.model) == weights_checksum(original)


def test_saved_sequence_classifier_folder_loads_back_identical(tmp_path):
    original = _tiny_classifier()
    folder = _save_with_tokenizer(original, tmp_path / "clf", bundled.minilm_folder())
    loaded = load_model(ModelSpec(str(folder), dtype="float16"))
    assert (loaded.kind, loaded.architecture) == ("sequence-classifier", "BertForSequenceClassification")
    assert weights_checksum(loaded.model) == weights_checksum(original.half())


def test_a_pytorch_bin_only_folder_loads_through_transformers(tmp_path):
    original = make_tiny_bert(vocab_size=30522)
    folder = tmp_path / "bin"
    original.config.save_pretrained(folder)
    torch.save(original.state_dict(), folder / "pytorch_model.bin")
    _save_with_tokenizer_only(folder)
    loaded = load_model(ModelSpec(str(folder)))
    assert weights_checksum(loaded.model) == weights_checksum(original)


def _save_with_tokenizer_only(folder: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(bundled.minilm_folder()).save_pretrained(folder)


def test_folder_without_a_model_is_a_load_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"holds no model \(no config.json\)"):
        load_model(ModelSpec(str(tmp_path)))


def test_folder_with_a_config_but_no_weights_is_a_load_error(tmp_path):
    make_tiny_bert().config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(ModelSpec(str(tmp_path)))


def test_missing_folder_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(str(tmp_path / "nowhere")))


def test_corrupted_weights_are_a_clear_load_error(tmp_path):
    folder = _save_with_tokenizer(make_tiny_bert(vocab_size=30522), tmp_path / "bad", bundled.minilm_folder())
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelLoadError, match=r"^could not read the model in .*bad: ") as caught:
        load_model(ModelSpec(str(folder)))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("builder", ["t5", "vit"])
def test_unsupported_architectures_name_the_architecture_and_the_kinds(tmp_path, builder):
    from transformers import T5Config, T5ForConditionalGeneration, ViTConfig, ViTModel

    if builder == "t5":
        model = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8,
                                                    vocab_size=64))
        name = "T5ForConditionalGeneration"
    else:
        model = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, image_size=8, patch_size=4))
        name = "ViTModel"
    model.save_pretrained(tmp_path / builder)  # no tokenizer: the architecture is judged first
    folder = tmp_path / builder
    with pytest.raises(UnsupportedModelError, match=f"^{name} .*not supported.*'causal-lm', 'encoder' or"):
        load_model(ModelSpec(str(folder)))


def test_a_memopt_saved_folder_is_read_as_a_memopt_save(tmp_path):
    (tmp_path / "memopt.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(ModelLoadError, match="was saved in format 1; this memopt reads 'memopt-compressed/1'"):
        load_model(ModelSpec(str(tmp_path)))


# hub (offline here: HF_HUB_OFFLINE=1 from conftest) ------------------------------------------------

def test_unknown_hub_id_offline_is_a_one_line_load_error():
    with pytest.raises(ModelLoadError, match=r"^could not load 'memopt-test/no-such-model' from the Hugging Face "
                                             r"Hub: the hub is unreachable \(offline\?\).*local folder$"):
        load_model(ModelSpec("memopt-test/no-such-model"))


def test_hub_id_found_in_the_local_hub_cache_loads_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0" * 40
    snapshot = tmp_path / "models--memopt-test--tiny-bert" / "snapshots" / commit
    original = make_tiny_bert(vocab_size=30522)
    _save_with_tokenizer(original, snapshot, bundled.minilm_folder())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = load_model(ModelSpec("memopt-test/tiny-bert"))
    assert loaded.kind == "encoder" and loaded.source.startswith("Hugging Face Hub memopt-test/tiny-bert")
    assert weights_checksum(loaded.model) == weights_checksum(original)


def test_weights_checksum_sees_a_single_changed_weight(tiny_llama):
    before = weights_checksum(tiny_llama)
    with torch.no_grad():
        tiny_llama.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert weights_checksum(tiny_llama) != before


def test_folder_without_tokenizer_is_a_load_error(tmp_path):
    make_tiny_bert().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        load_model(ModelSpec(str(tmp_path)))


def test_a_damaged_gguf_is_a_load_error_and_caches_nothing(tmp_path, monkeypatch):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 60)
    monkeypatch.setenv("MEMOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(bundled, "smollm2_gguf_path", lambda: bad)
    with pytest.raises(ModelLoadError, match="^could not convert the bundled SmolLM2 GGUF"):
        bundled.smollm2_tokenizer_folder()
    assert not (tmp_path / "cache" / "tokenizers" / "smollm2").exists()
