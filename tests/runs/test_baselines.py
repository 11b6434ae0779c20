"""The original's reference on disk: a new process (a new Workbench) never scores the original again."""
from __future__ import annotations

import pytest
import torch

from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig
from memopt_core.evaluation.reference_store import ReferenceStore
from memopt_core.loading.models import load_model
from memopt_core.runs.workbench import Workbench

EVAL = EvalConfig(seq_len=64, max_tokens=256, gen_tokens=3, zero_shot=True)


def counted(store: ReferenceStore) -> tuple[Workbench, list[int]]:
    """A freshly loaded tiny-llama workbench, and a list that grows by one per forward of its original."""
    bench = Workbench(load_model(ModelSpec("tiny-llama")), references=store)
    # Its base model: scoring runs it apart from the head (evaluation/logit_slices.py), every other
    # forward goes through it too. Copies are deep copies that keep this hook: count the calls of
    # the original object only.
    original = bench.loaded.model.base_model
    calls: list[int] = []
    original.register_forward_pre_hook(lambda module, args: calls.append(1) if module is original else None)
    return bench, calls


def setting(bits: int, evaluation: EvalConfig = EVAL) -> RunConfig:
    return RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(bits=bits), eval=evaluation)


@pytest.mark.slow
def test_a_new_workbench_takes_the_original_from_disk(tmp_path):
    store = ReferenceStore(tmp_path / "references")
    first, first_calls = counted(store)
    before = first.run(setting(4))
    assert first_calls and before.timings["baseline_s"] > 0
    assert len(list((tmp_path / "references").glob("*.safetensors"))) == 3  # windows, zero-shot, generation

    second, second_calls = counted(store)
    after = second.run(setting(3))
    assert second_calls == [] and after.timings["baseline_s"] == 0.0  # not one forward of the original
    assert after.baseline == {**before.baseline, "seconds": 0.0, "latency_ms_per_window": 0.0}
    again = second.run(setting(4))
    assert again.compressed["perplexity"] == before.compressed["perplexity"]
    assert again.compressed["kl_divergence"] == before.compressed["kl_divergence"]
    assert again.compressed["zero_shot"] == before.compressed["zero_shot"]


@pytest.mark.slow
def test_a_stored_longer_run_serves_a_shorter_protocol(tmp_path):
    store = ReferenceStore(tmp_path)
    counted(store)[0].run(setting(4, EvalConfig(seq_len=64, max_tokens=512, gen_tokens=0, zero_shot=False)))
    shorter, calls = counted(store)
    result = shorter.run(setting(4, EvalConfig(seq_len=64, max_tokens=192, gen_tokens=0, zero_shot=False)))
    assert calls == [] and result.baseline["tokens"] == 3 * 63
    longer, calls = counted(store)
    longer.run(setting(4, EvalConfig(seq_len=64, max_tokens=1024, gen_tokens=0, zero_shot=False)))
    assert len(calls) > 0  # only the windows past the stored ones are scored ...
    assert longer.original(EvalConfig(seq_len=64, max_tokens=1024, gen_tokens=0, zero_shot=False)).lm.resumed_windows == 8


@pytest.mark.slow
def test_an_unreadable_reference_is_scored_again_and_rewritten(tmp_path):
    store = ReferenceStore(tmp_path)
    evaluation = EvalConfig(seq_len=64, max_tokens=128, gen_tokens=0, zero_shot=False)
    counted(store)[0].run(setting(4, evaluation))
    for path in tmp_path.glob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    bench, calls = counted(store)
    result = bench.run(setting(4, evaluation))
    assert calls and result.timings["baseline_s"] > 0
    assert store.load(bench.original(evaluation)._lm_key()) is not None  # rewritten whole
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_reference_store_round_trip_checks_its_key(tmp_path):
    store = ReferenceStore(tmp_path)
    key = {"kind": "test", "model": "m"}
    store.save(key, {"a": torch.arange(3)}, {"note": "x"})
    tensors, meta = store.load(key)
    assert torch.equal(tensors["a"], torch.arange(3)) and meta == {"note": "x"}
    assert store.load({"kind": "test", "model": "other"}) is None
    other = {"kind": "test", "model": "n"}
    store.path(key).replace(store.path(other))  # a file under the wrong name is not trusted
    assert store.load(other) is None


@pytest.mark.slow
@pytest.mark.parametrize("compute", [None, "bfloat16"])
def test_compute_dtype_keys_the_reference(tmp_path, compute):
    store = ReferenceStore(tmp_path)
    evaluation = EvalConfig(seq_len=64, max_tokens=128, gen_tokens=0, zero_shot=False, compute_dtype=compute)
    result = counted(store)[0].run(setting(4, evaluation))
    assert result.protocol["compute_dtype"] == (compute or "float32")
    other = EvalConfig(seq_len=64, max_tokens=128, gen_tokens=0, zero_shot=False,
                       compute_dtype="bfloat16" if compute is None else None)
    bench, calls = counted(store)
    bench.run(setting(4, other))
    assert calls  # another compute dtype: another reference
