"""A compressed setting recovered end to end on the tiny bundled model: the JSON, same bytes, same
sparsity, the original untouched, training tokens apart from the evaluated ones, the results store."""
import json
import threading

import pytest
import torch

from memopt_core.compression.calibration_data import PROTECTED_TOKENS
from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.errors import ConfigError, DataError
from memopt_core.loading.models import weights_checksum
from memopt_core.recovery.config import RecoveryConfig
from memopt_core.recovery.recover import recover, stored_recovery
from memopt_core.recovery.stored import recovered_label, recovered_results, recovery_key
from memopt_core.runs.store import ResultStore
from memopt_core.runs.stored import config_key
from memopt_core.runs.workbench import Workbench

SMALL_EVAL = EvalConfig(seq_len=32, max_tokens=128, gen_tokens=0, zero_shot=False)
SMALL = RecoveryConfig(steps=4, lr=5e-3, tokens_per_step=64, seq_len=32, eval_every=2, validation_windows=2)


@pytest.fixture(scope="module")
def bench():
    return Workbench.load(ModelSpec("tiny-llama"))


def _config(prune=PruneConfig(ratio=0.5), quant=QuantConfig(bits=4, granularity="group", group_size=32)):
    return RunConfig(ModelSpec("tiny-llama"), prune=prune, quant=quant, eval=SMALL_EVAL)


@pytest.mark.slow
def test_recovered_run_reports_before_after_and_keeps_bytes_and_zeros(bench):
    checksum = weights_checksum(bench.loaded.model)
    run = recover(bench, _config(), SMALL)
    result = run.to_dict()
    assert weights_checksum(bench.loaded.model) == checksum
    assert set(result) >= {"model", "config", "baseline", "compressed", "memory", "sparsity", "layers", "timings",
                           "protocol", "notes", "before_recovery", "recovery"}
    assert result["before_recovery"]["perplexity"] == run.before_result.compressed["perplexity"]
    recovery = result["recovery"]
    assert recovery["steps"] == 4 and recovery["steps_done"] == 4 and recovery["seconds"] > 0
    assert recovery["tokens"] == 4 * 64 and [p["step"] for p in recovery["curve"]] == [0, 2, 4]
    assert recovery["config"] == SMALL.to_dict() and recovery["label"] == "+ recovery 4 steps"
    checks = recovery["checks"]
    assert checks["same_bytes"] and result["memory"]["stored_bytes"] == run.before_result.memory.stored_bytes
    assert result["sparsity"] == run.before_result.sparsity == checks["sparsity_after"]
    assert result["memory"]["bits_per_weight"] == pytest.approx(4.5)
    assert result["timings"]["recovery_s"] == recovery["seconds"]


@pytest.mark.slow
def test_training_tokens_come_after_the_evaluated_ones(bench):
    run = recover(bench, _config(), SMALL)
    data = run.recovery["data"]
    assert {t["name"] for t in data["texts"]} == {"wikipedia", "news"}
    assert all(t["first_token"] >= max(PROTECTED_TOKENS, SMALL_EVAL.max_tokens) for t in data["texts"])
    assert data["validation_windows"] == 4 and data["train_windows"] >= 4 * 2


@pytest.mark.slow
def test_bad_requests_fail_with_one_line_before_training(bench, tmp_path):
    with pytest.raises(ConfigError, match="nothing to recover: the setting neither prunes nor quantizes"):
        recover(bench, _config(prune=None, quant=None), SMALL)
    with pytest.raises(ConfigError, match="needs packed storage"):
        recover(bench, _config(quant=QuantConfig(bits=4, storage="fake")), SMALL)
    with pytest.raises(ConfigError, match="select none of them"):
        recover(bench, _config(), RecoveryConfig(steps=2, tokens_per_step=32, seq_len=32, only=("*.nothing",)))
    short = tmp_path / "short.txt"
    short.write_text("Too short to train on. " * 5, encoding="utf-8")
    with pytest.raises(DataError, match="short.txt.*are needed") as error:
        recover(bench, _config(), RecoveryConfig(steps=2, tokens_per_step=32, seq_len=32, train_text=str(short)))
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_the_store_keeps_recovered_runs_beside_unrecovered_ones(bench, tmp_path):
    store, config = ResultStore(tmp_path / "runs.db"), _config()
    loads = []

    def workbench():
        loads.append(1)
        return bench

    first, cached = stored_recovery(config, SMALL, store, workbench)
    again, cached_again = stored_recovery(config, SMALL, store, workbench)
    assert not cached and cached_again and len(loads) == 1
    assert again == json.loads(json.dumps(first, default=str))  # as stored: JSON
    plain = store.get(config_key(config))
    assert plain is not None and "recovery" not in plain
    assert plain["compressed"]["perplexity"] == first["before_recovery"]["perplexity"]
    found = recovered_results(store, [config])
    assert [(key, label) for key, label, _ in found] == [(recovery_key(config, SMALL),
                                                          "magnitude 50% + W4A16 g32 sym + recovery 4 steps")]


@pytest.mark.slow
def test_a_stopped_recovery_is_stored_under_the_steps_it_ran(bench, tmp_path):
    store, config, cancel = ResultStore(tmp_path / "runs.db"), _config(), threading.Event()

    def stop_after_one(update):
        if update.step == 1:
            cancel.set()

    result, _ = stored_recovery(config, SMALL, store, lambda: bench, cancel=cancel, on_update=stop_after_one)
    assert result["recovery"]["stop_reason"] == "stopped" and result["recovery"]["steps_done"] == 1
    assert store.get(recovery_key(config, SMALL)) is None  # asking for 4 steps again trains again
    assert store.get(recovery_key(config, SMALL, stopped_at=1)) == json.loads(json.dumps(result, default=str))
    assert recovered_label(config, SMALL, 1) == "magnitude 50% + W4A16 g32 sym + recovery 1 of 4 steps (stopped)"


@pytest.mark.slow
def test_recovered_weights_stay_finite_and_the_model_is_frozen_again(bench):
    run = recover(bench, _config(quant=QuantConfig(bits=3)), SMALL)
    assert not any(p.requires_grad for p in run.compressed.model.parameters())
    assert all(bool(torch.isfinite(t).all()) for t in run.compressed.model.state_dict().values()
               if t.is_floating_point())
