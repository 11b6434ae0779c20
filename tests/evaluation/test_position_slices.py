"""Scoring a batch's logits a slice of positions at a time gives the figures of the whole logits:
each row's log-softmax, NLL, KL and top-1 depend on that row alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tiny_models import greedy_windows, make_tiny_llama, perturbed_copy
from memopt_core.evaluation.logit_slices import position_slices, slice_rows
from memopt_core.evaluation.progressive import WindowScorer, evaluate_causal_lm

VOCAB = 320
N_WINDOWS, SEQ = 5, 20
WHOLE = 1 << 40  # elements per slice: every window's logits in one slice


@pytest.fixture(scope="module")
def models():
    model = make_tiny_llama(vocab_size=VOCAB)
    return model, perturbed_copy(model)


@pytest.fixture(scope="module")
def windows(models):
    return greedy_windows(models[0], N_WINDOWS, 8, vocab_size=VOCAB)


def _score(model, windows, reference, kl_top_k, elements):
    scorer = WindowScorer(model, windows, reference, kl_top_k=kl_top_k, batch_size=2, slice_elements=elements)
    for _ in scorer.steps():
        pass
    return scorer.result()


def test_position_slices_cover_the_flattened_rows_in_order():
    logits = torch.arange(2 * 19 * 3).reshape(2, 19, 3)  # [B, S-1, V]
    pieces = list(position_slices(logits, 7))
    assert [p.shape[0] for p in pieces] == [7, 7, 5, 7, 7, 5]
    assert torch.equal(torch.cat(pieces), logits.flatten(0, 1))
    assert slice_rows(make_tiny_llama(vocab_size=VOCAB), 7 * VOCAB + 5) == 7


@pytest.mark.parametrize("kl_top_k", [None, 4])
def test_sliced_scoring_equals_the_whole_logits(models, windows, kl_top_k):
    model, perturbed = models
    reference = evaluate_causal_lm(model, windows, kl_top_k=kl_top_k)[1]
    whole, whole_rows = _score(perturbed, windows, reference, kl_top_k, WHOLE)
    sliced, sliced_rows = _score(perturbed, windows, reference, kl_top_k, 7 * VOCAB)  # 7 rows: 19 = 7 + 7 + 5
    # The head makes each slice's logits apart: a product over fewer rows, equal to float32 rounding
    # (about 1e-7 of a logit), which moves the KL, a small difference of log-probabilities, by as much.
    for name in ("perplexity", "mean_nll", "kl_divergence", "top1_agreement", "top1_accuracy", "perplexity_ratio"):
        assert getattr(sliced, name) == pytest.approx(getattr(whole, name), rel=1e-6, abs=1e-7), name
    assert torch.equal(sliced_rows.top1, whole_rows.top1)
    torch.testing.assert_close(sliced_rows.nll, whole_rows.nll)
    if kl_top_k is None:
        torch.testing.assert_close(sliced_rows.log_probs, whole_rows.log_probs)
    else:
        assert torch.equal(sliced_rows.top_ids, whole_rows.top_ids)
        torch.testing.assert_close(sliced_rows.rest_log_prob, whole_rows.rest_log_prob)


def test_sliced_nll_and_exact_kl_match_torch(models, windows):
    """Against torch's cross_entropy and kl_div on the whole logits in float64."""
    model, perturbed = models
    reference = evaluate_causal_lm(model, windows, kl_top_k=None)[1]
    metrics, _ = _score(perturbed, windows, reference, None, 3 * VOCAB)
    with torch.inference_mode():
        p = model(windows).logits[:, :-1].double().log_softmax(-1).flatten(0, 1)
        q = perturbed(windows).logits[:, :-1].double().log_softmax(-1).flatten(0, 1)
    targets = windows[:, 1:].reshape(-1)
    assert metrics.mean_nll == pytest.approx(F.nll_loss(q, targets).item(), rel=1e-5)
    kl = F.kl_div(q, p, log_target=True, reduction="batchmean").item()
    assert metrics.kl_divergence == pytest.approx(kl, rel=1e-4, abs=1e-7)
