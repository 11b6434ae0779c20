"""The distillation loop on the tiny bundled models: it learns, a stop keeps the best checkpoint, a
non-finite loss stops the run with a clear message and never enters the kept state."""
import threading

import pytest
import torch

from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.evaluation.progressive import evaluate_causal_lm
from memopt_core.evaluation.reference_store import ReferenceStore
from memopt_core.loading.models import load_model
from memopt_core.recovery import distill
from memopt_core.recovery.config import RecoveryConfig
from memopt_core.recovery.data import training_data
from memopt_core.recovery.distill import Distillation, schedule
from memopt_core.recovery.trainable import open_for_training_
from memopt_core.runs.workbench import Workbench

SMALL_EVAL = EvalConfig(seq_len=32, max_tokens=128, gen_tokens=0, zero_shot=False)
SMALL = RecoveryConfig(steps=8, lr=5e-3, tokens_per_step=64, seq_len=32, eval_every=2, validation_windows=2,
                       sentences_per_step=8, validation_sentences=16)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """tiny-llama with its weights scaled up: random weights at their usual scale give near-uniform
    next-token distributions, which compression barely moves (KL ~1e-5); these move (KL ~0.04).
    Its own reference store: stored references are keyed by the model's files, not by weights
    changed in memory."""
    bench = Workbench(load_model(ModelSpec("tiny-llama")), references=ReferenceStore(tmp_path_factory.mktemp("refs")))
    with torch.no_grad():
        bench.loaded.model.model.embed_tokens.weight.mul_(20.0)
        for name, param in bench.loaded.model.named_parameters():
            if name.endswith("proj.weight"):
                param.mul_(3.0)
    return bench


@pytest.fixture(scope="module")
def bert():
    """tiny-bert with its block weights scaled up, so the blocks (not the embeddings) shape the
    sentence embeddings: magnitude 50% then drops the cosine to about 0.97 instead of 0.9999."""
    bench = Workbench.load(ModelSpec("tiny-bert"))
    with torch.no_grad():
        for name, param in bench.loaded.model.named_parameters():
            if name.startswith("encoder.") and name.endswith(("dense.weight", "query.weight", "key.weight",
                                                              "value.weight")):
                param.mul_(4.0)
    return bench


def _loop(bench, recovery=SMALL, prune=PruneConfig(ratio=0.7), quant=QuantConfig(bits=3)):
    config = RunConfig(bench.loaded.spec, prune=prune, quant=quant, eval=SMALL_EVAL)
    compressed, _ = bench.compress(config)
    view = open_for_training_(compressed.model, compressed.target_names, freeze_zeros=prune is not None,
                              train_norms=recovery.train_norms)
    sentences = [s for s, _ in bench.baseline(SMALL_EVAL).data.sentences]
    data = training_data(bench.loaded.kind, bench.loaded.tokenizer, recovery, SMALL_EVAL, sentences)
    return Distillation(view, bench.loaded.model, bench.loaded.tokenizer, bench.loaded.kind, data, recovery)


def _drive(loop, cancel=None, on_update=lambda update: None):
    with torch.enable_grad():
        for update in loop.run(cancel):
            on_update(update)
    loop.finish()


def _validation_perplexity(loop) -> float:
    metrics, _ = evaluate_causal_lm(loop.view.model, loop.data.validation, kl_top_k=1)
    return metrics.perplexity


@pytest.mark.slow
def test_distillation_lowers_the_kl_to_the_original(llama):
    loop = _loop(llama)
    windows = llama.baseline(SMALL_EVAL).data.windows
    reference = llama.baseline(SMALL_EVAL).reference.lm
    before, _ = evaluate_causal_lm(loop.view.model, windows, reference=reference)
    _drive(loop)
    after, _ = evaluate_causal_lm(loop.view.model, windows, reference=reference)
    assert loop.stop_reason == "finished" and loop.steps_done == SMALL.steps
    assert [p.step for p in loop.curve] == [0, 2, 4, 6, 8]
    assert loop.tokens == SMALL.steps * SMALL.tokens_per_step
    assert after.kl_divergence < 0.8 * before.kl_divergence  # on evaluation windows training never saw
    best = min(loop.curve, key=lambda p: p.validation)
    assert loop.best_step == best.step and _validation_perplexity(loop) == best.validation


@pytest.mark.slow
def test_a_stopped_run_keeps_its_best_checkpoint(llama):
    loop, cancel = _loop(llama), threading.Event()

    def stop_at_five(update):
        if update.step == 5:
            cancel.set()

    _drive(loop, cancel, stop_at_five)
    assert loop.stop_reason == "stopped" and loop.steps_done == 5
    assert loop.curve[-1].step == 5  # the last state was scored before choosing
    best = min(loop.curve, key=lambda p: p.validation)
    assert _validation_perplexity(loop) == best.validation
    assert loop.summary()["best_step"] == best.step


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_and_is_never_applied(llama, monkeypatch):
    calls = {"n": 0}
    real = distill.kl_to_teacher

    def nan_on_third(student, teacher):
        calls["n"] += 1
        loss = real(student, teacher)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(distill, "kl_to_teacher", nan_on_third)
    loop = _loop(llama)
    _drive(loop)
    assert loop.stop_reason == "diverged" and loop.steps_done == 2
    assert "nan at step 3" in loop.message and "not applied" in loop.message
    assert loop.view.all_finite()
    best = min(loop.curve, key=lambda p: p.validation)
    assert _validation_perplexity(loop) == best.validation


@pytest.mark.slow
def test_encoder_distillation_raises_the_cosine(bert):
    loop = _loop(bert, prune=PruneConfig(ratio=0.5), quant=None)
    _drive(loop)
    start, best = loop.curve[0].validation, max(p.validation for p in loop.curve)
    assert loop.metric == "cosine" and start < 0.99
    assert best - start > 0.25 * (1 - start)  # a quarter of the gap to 1 closed in 8 small steps
    assert loop.tokens > 0


def test_schedule_warms_up_then_decays_to_a_tenth():
    factors = [schedule(step, 100) for step in range(100)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_schedule_follows_the_time_limit_when_it_comes_first():
    assert schedule(20, 100, time_used=0.5) == pytest.approx(0.55)  # half the time: halfway down the cosine
    assert schedule(20, 100, time_used=0.0) == schedule(20, 100)
    assert schedule(20, 100, time_used=1.5) == pytest.approx(0.1)
