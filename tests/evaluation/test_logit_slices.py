"""Logits made a slice of positions at a time: the model's own logits, and never a whole window's
worth from the head where it can be applied apart (checked on what ``lm_head`` returns)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from tiny_models import greedy_windows, make_tiny_llama, perturbed_copy
from memopt_core.config import evaluation as settings
from memopt_core.evaluation.logit_slices import head_apart, logit_slices, slice_rows
from memopt_core.evaluation.progressive import WindowScorer, evaluate_causal_lm

VOCAB = 320
ROWS = 7  # positions per slice: 19 = 7 + 7 + 5


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def windows(model):
    return greedy_windows(model, 5, 8, vocab_size=VOCAB)  # [5, 20]


class HeadRows:
    """Records the number of positions of every tensor ``lm_head`` returns."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.handle = model.lm_head.register_forward_hook(lambda m, i, out: self.rows.append(out.shape[-2]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@contextmanager
def streamed(model):
    """Mark ``model`` as accelerate marks a model dispatched under a memory cap (``hf_device_map``)."""
    model.hf_device_map = {"": "cpu"}
    try:
        yield model
    finally:
        del model.hf_device_map


def test_a_model_held_in_memory_makes_its_logits_in_one_head_product(model, windows):
    assert head_apart(model) is None  # not streamed: one product reads the head's weights once
    with torch.inference_mode(), HeadRows(model) as head:
        pieces = list(logit_slices(model, windows, ROWS))
    assert head.rows == [windows.shape[1]] and [p.shape[0] for p in pieces] == [7, 7, 5] * 5


def test_slices_are_the_models_own_logits_and_the_head_never_makes_a_whole_window(model, windows):
    with torch.inference_mode(), streamed(model):
        assert head_apart(model) is model.lm_head
        with HeadRows(model) as head:
            pieces = list(logit_slices(model, windows, ROWS))
        whole = model(input_ids=windows).logits[:, :-1].flatten(0, 1)  # [5 * 19, V]
    assert [p.shape[0] for p in pieces] == [7, 7, 5] * 5
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-5, atol=1e-5)
    assert max(head.rows) == ROWS  # a whole window would be 19 (20 with the last position)


def test_heads_that_cannot_be_applied_apart_run_the_whole_forward(model, windows, monkeypatch):
    """An architecture outside the list (a head followed by soft-capping or a scale) is sliced after
    its own forward: the head then returns whole windows, with the same figures."""
    sliced = evaluate_causal_lm(perturbed_copy(model), windows, kl_top_k=None)[0]
    monkeypatch.setattr(settings, "PLAIN_HEAD_TYPES", frozenset())
    with torch.inference_mode(), streamed(model), HeadRows(model) as head:
        assert head_apart(model) is None
        list(logit_slices(model, windows, ROWS))
    assert head.rows == [windows.shape[1]]  # one forward of the whole batch
    whole = evaluate_causal_lm(perturbed_copy(model), windows, kl_top_k=None)[0]
    for name in ("perplexity", "mean_nll", "top1_accuracy"):
        assert getattr(sliced, name) == pytest.approx(getattr(whole, name), rel=1e-6), name


def test_the_scorer_keeps_the_heads_output_within_one_slice(model, windows):
    reference = evaluate_causal_lm(model, windows, kl_top_k=4)[1]
    copy = perturbed_copy(model)
    scorer = WindowScorer(copy, windows, reference, kl_top_k=4, batch_size=2, slice_elements=ROWS * VOCAB)
    with streamed(copy), HeadRows(copy) as head:
        for _ in scorer.steps():
            pass
    assert scorer.slice_rows == slice_rows(copy, ROWS * VOCAB) == ROWS
    assert max(head.rows) == ROWS and sum(head.rows) == windows.shape[0] * (windows.shape[1] - 1)
    assert scorer.result()[0].exact
