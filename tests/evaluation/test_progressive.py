"""The progressive scoring loop: each estimate against a direct computation on the windows so far,
the last one identical to evaluate_causal_lm, cancel and early stop, resuming, the lazy original,
batches scored side by side (the same figures, in window order, with cancel and divergence)."""
from __future__ import annotations

import copy
import math
import threading

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from tiny_models import greedy_windows, make_tiny_llama, perturbed_copy
from memopt_core.errors import ConfigError
from memopt_core.evaluation.original_scores import OriginalScores
from memopt_core.evaluation.progressive import WindowScorer, evaluate_causal_lm

VOCAB = 320
N_WINDOWS, SEQ = 6, 20
MARK = 1  # a token id greedy_windows never draws (it draws from 2 on), planted to break one window


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def perturbed(model):
    return perturbed_copy(model)


@pytest.fixture(scope="module")
def windows(model):
    """6 windows of 20 tokens: 8 random, then 12 greedy ones (a text the model partly predicts)."""
    return greedy_windows(model, N_WINDOWS, 8, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def reference(model, windows):
    return evaluate_causal_lm(model, windows, kl_top_k=None)[1]


def token_nll(model, windows):
    """[n_windows, seq-1] float64 per-token NLL from one plain forward."""
    with torch.inference_mode():
        logits = model(windows).logits[:, :-1].double()
    return F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")


def test_each_estimate_is_the_figure_of_the_windows_so_far(model, perturbed, windows, reference):
    estimates = list(WindowScorer(perturbed, windows, reference, kl_top_k=None, batch_size=4).steps())
    assert [e.windows for e in estimates] == list(range(1, N_WINDOWS + 1))  # one per window, batches or not
    own, original = token_nll(perturbed, windows), token_nll(model, windows)
    for k in (1, 3, N_WINDOWS):
        estimate = estimates[k - 1]
        metrics, _ = evaluate_causal_lm(perturbed, windows[:k], reference.head(k * (SEQ - 1)))
        assert estimate.tokens == k * (SEQ - 1)
        assert estimate.perplexity == pytest.approx(math.exp(own[:k].mean().item()), rel=1e-5)
        ratio = math.exp(own[:k].mean().item()) / math.exp(original[:k].mean().item())
        assert estimate.perplexity_ratio == pytest.approx(ratio, rel=1e-5)
        assert estimate.kl_divergence == pytest.approx(metrics.kl_divergence, rel=1e-6)
        assert estimate.top1_agreement == pytest.approx(metrics.top1_agreement)


def test_the_ratio_band_is_t_over_paired_window_differences(model, perturbed, windows, reference):
    estimate = list(WindowScorer(perturbed, windows, reference, kl_top_k=None).steps())[3]
    diff = (token_nll(perturbed, windows) - token_nll(model, windows))[:4].mean(1).numpy()  # [4] windows
    half = stats.t.ppf(0.975, 3) * stats.sem(diff) * math.sqrt(1 - 4 / N_WINDOWS)
    expected = [math.exp(diff.mean() - half), math.exp(diff.mean() + half)]
    assert estimate.ratio_ci95 == pytest.approx(expected, rel=1e-5)
    assert estimate.ratio_ci95[0] < estimate.perplexity_ratio < estimate.ratio_ci95[1]


def test_last_step_is_exactly_evaluate_causal_lm(perturbed, windows, reference):
    scorer = WindowScorer(perturbed, windows, reference, kl_top_k=None)
    last = list(scorer.steps())[-1]
    metrics, _ = scorer.result()
    direct, _ = evaluate_causal_lm(perturbed, windows, reference)
    assert last.exact and metrics.exact and metrics.tokens == direct.tokens
    assert (metrics.perplexity, metrics.kl_divergence, metrics.top1_agreement) == \
        (direct.perplexity, direct.kl_divergence, direct.top1_agreement)
    assert last.perplexity == pytest.approx(direct.perplexity, rel=1e-12)
    assert last.ratio_ci95 == [last.perplexity_ratio, last.perplexity_ratio]  # nothing left to estimate
    assert metrics.perplexity_ci95 is None  # an exact result carries no band


def test_cancel_between_windows_keeps_what_was_scored(perturbed, windows, reference):
    cancel = threading.Event()
    scorer = WindowScorer(perturbed, windows, reference, batch_size=1, workers=1)
    seen = []
    for estimate in scorer.steps(cancel=cancel):
        seen.append(estimate.windows)
        if estimate.windows == 2:
            cancel.set()
    metrics, own = scorer.result()
    assert seen == [1, 2] and not metrics.exact and metrics.tokens == 2 * (SEQ - 1)
    assert own.tokens == 2 * (SEQ - 1) and metrics.total_tokens == N_WINDOWS * (SEQ - 1)
    cancel.clear()
    assert [e.windows for e in scorer.steps(cancel=cancel)] == [3, 4, 5, 6]  # resumes where it stopped
    assert scorer.result()[0].perplexity == pytest.approx(evaluate_causal_lm(perturbed, windows)[0].perplexity)


def test_target_interval_stops_early_with_an_estimate(perturbed, windows, reference):
    scorer = WindowScorer(perturbed, windows, reference, batch_size=3)
    estimates = list(scorer.steps(target_ci=0.5))
    metrics, own = scorer.result()
    assert estimates[-1].ratio_half_width <= 0.5 < min(e.ratio_half_width for e in estimates[:-1] + [estimates[0]])
    assert not metrics.exact and metrics.tokens == estimates[-1].tokens < metrics.total_tokens
    assert metrics.ratio_ci95 == estimates[-1].ratio_ci95 and own.tokens == metrics.tokens
    with pytest.raises(ConfigError, match="target interval"):
        list(WindowScorer(perturbed, windows, reference).steps(target_ci=2.0))


def test_resume_from_a_stored_prefix_scores_only_the_rest(model, windows):
    full_metrics, full = evaluate_causal_lm(model, windows, kl_top_k=8)
    partial = evaluate_causal_lm(model, windows[:4], kl_top_k=8)[1]
    scorer = WindowScorer(model, windows, kl_top_k=8, batch_size=1)
    scorer.resume_from(partial)
    assert scorer.scored_windows == 4
    assert [e.windows for e in scorer.steps()] == [5, 6]
    metrics, own = scorer.result()
    assert metrics.perplexity == pytest.approx(full_metrics.perplexity, rel=1e-12)
    assert torch.equal(own.top_ids, full.top_ids) and torch.equal(own.nll, full.nll)
    stale = WindowScorer(model, windows.flip(0), kl_top_k=8)
    stale.resume_from(partial)  # other windows' rows are never taken
    assert stale.scored_windows == 0


def test_lazy_original_is_scored_only_as_far_as_needed(model, perturbed, windows, reference):
    original = OriginalScores(model, windows, kl_top_k=None, batch_size=2)
    scorer = WindowScorer(perturbed, windows, original, kl_top_k=None, batch_size=2)
    steps = scorer.steps()
    first = next(steps)
    assert original.scorer.scored_windows < N_WINDOWS  # the first estimate did not wait for the baseline
    rest = list(steps)
    direct = list(WindowScorer(perturbed, windows, reference, kl_top_k=None).steps())
    assert [e.kl_divergence for e in [first, *rest]] == pytest.approx([e.kl_divergence for e in direct], rel=1e-6)
    metrics, full = original.finish()
    assert original.complete and torch.equal(full.nll, reference.nll)
    assert metrics.perplexity == pytest.approx(evaluate_causal_lm(model, windows)[0].perplexity, rel=1e-12)


def test_bfloat16_compute_is_close_to_float32_and_float32_needs_float32_weights(model, windows):
    fp32, _ = evaluate_causal_lm(model, windows)
    bf16, _ = evaluate_causal_lm(model, windows, compute="bfloat16")
    assert bf16.perplexity != fp32.perplexity
    assert bf16.perplexity == pytest.approx(fp32.perplexity, rel=0.05)
    with pytest.raises(ConfigError, match="needs weights loaded in float32"):
        evaluate_causal_lm(copy.deepcopy(model).to(torch.bfloat16), windows, compute="float32")


def threads_of_a_new_thread() -> int:
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    return seen[0]


def test_side_by_side_figures_equal_one_window_at_a_time(perturbed, windows, reference):
    threads, new_thread = torch.get_num_threads(), threads_of_a_new_thread()
    alone = WindowScorer(perturbed, windows, reference, kl_top_k=8, batch_size=1, workers=1)
    paired = WindowScorer(perturbed, windows, reference, kl_top_k=8, batch_size=1, workers=2)
    alone_steps, paired_steps = list(alone.steps()), list(paired.steps())
    assert [e.windows for e in paired_steps] == list(range(1, N_WINDOWS + 1))
    assert [e.to_dict() for e in paired_steps] == [e.to_dict() | {"seconds": p.seconds}
                                                  for e, p in zip(alone_steps, paired_steps)]
    (alone_metrics, alone_rows), (paired_metrics, paired_rows) = alone.result(), paired.result()
    assert paired_metrics.exact and paired_metrics.perplexity == alone_metrics.perplexity
    for name in ("nll", "top1", "top_ids", "top_log_probs", "rest_log_prob"):
        assert torch.equal(getattr(paired_rows, name), getattr(alone_rows, name)), name
    assert torch.get_num_threads() == threads and threads_of_a_new_thread() == new_thread


def test_rounds_are_one_batch_then_pairs_and_cancel_keeps_a_whole_round(perturbed, windows, reference):
    cancel = threading.Event()
    scorer = WindowScorer(perturbed, windows, reference, batch_size=1, workers=2)
    seen = []
    for estimate in scorer.steps(cancel=cancel):
        seen.append((estimate.windows, scorer.scored_windows))
        if estimate.windows == 2:
            cancel.set()
    assert seen == [(1, 1), (2, 3), (3, 3)]  # the first window alone, then windows 2 and 3 together
    assert scorer.result()[1].tokens == 3 * (SEQ - 1)


def broken_on(model, marked_window: int, windows: torch.Tensor):
    """A copy whose embeddings are NaN wherever MARK is, and the windows with MARK planted in one."""
    broken = copy.deepcopy(model)
    broken.model.embed_tokens.register_forward_hook(
        lambda module, args, out: out.masked_fill((args[0] == MARK)[..., None], float("nan")))
    planted = windows.clone()
    planted[marked_window, 3] = MARK
    return broken, planted


@pytest.mark.parametrize("marked, kept", [(2, 2), (1, 1)])  # second of a pair, first of a pair
def test_divergence_inside_a_round_keeps_the_windows_before_it(model, windows, marked, kept):
    broken, planted = broken_on(model, marked, windows)
    scorer = WindowScorer(broken, planted, kl_top_k=8, batch_size=1, workers=2)
    assert [e.windows for e in scorer.steps()] == list(range(1, kept + 1))
    metrics, rows = scorer.result()
    assert metrics.diverged and f"windows {marked}-{marked}" in metrics.reason
    assert rows.tokens == kept * (SEQ - 1) and scorer.scored_windows == kept
