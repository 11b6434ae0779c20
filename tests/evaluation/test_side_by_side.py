"""Batches scored side by side: the same figures as one forward at a time, in window order, with
cancel and divergence between and within rounds; torch's thread count is left as it was."""
from __future__ import annotations

import copy
import threading

import pytest
import torch

from tiny_models import greedy_windows, make_tiny_llama, perturbed_copy
from memopt_core.evaluation.progressive import WindowScorer, evaluate_causal_lm
from memopt_core.evaluation.side_by_side import side_by_side, worker_count
from memopt_core.planning import guard

VOCAB = 320
N_WINDOWS, SEQ = 6, 20
MARK = 1  # a token id greedy_windows never draws (it draws from 2 on), planted to break one window


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(vocab_size=VOCAB)


@pytest.fixture(scope="module")
def windows(model):
    return greedy_windows(model, N_WINDOWS, 8, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def reference(model, windows):
    return evaluate_causal_lm(model, windows, kl_top_k=None)[1]


def threads_of_a_new_thread() -> int:
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    return seen[0]


def test_side_by_side_figures_equal_one_window_at_a_time(model, windows, reference):
    copy_model = perturbed_copy(model)
    threads, new_thread = torch.get_num_threads(), threads_of_a_new_thread()
    alone = WindowScorer(copy_model, windows, reference, kl_top_k=8, batch_size=1, workers=1)
    paired = WindowScorer(copy_model, windows, reference, kl_top_k=8, batch_size=1, workers=2)
    alone_steps, paired_steps = list(alone.steps()), list(paired.steps())
    assert [e.windows for e in paired_steps] == list(range(1, N_WINDOWS + 1))
    assert [e.to_dict() for e in paired_steps] == [e.to_dict() | {"seconds": p.seconds}
                                                  for e, p in zip(alone_steps, paired_steps)]
    (alone_metrics, alone_rows), (paired_metrics, paired_rows) = alone.result(), paired.result()
    assert paired_metrics.exact and paired_metrics.perplexity == alone_metrics.perplexity
    for name in ("nll", "top1", "top_ids", "top_log_probs", "rest_log_prob"):
        assert torch.equal(getattr(paired_rows, name), getattr(alone_rows, name)), name
    assert torch.get_num_threads() == threads and threads_of_a_new_thread() == new_thread


def test_rounds_are_one_batch_then_pairs_and_cancel_keeps_a_whole_round(model, windows, reference):
    cancel = threading.Event()
    scorer = WindowScorer(perturbed_copy(model), windows, reference, batch_size=1, workers=2)
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


def test_side_by_side_keeps_order_raises_the_first_error_and_counts_workers(model, monkeypatch):
    order = side_by_side([lambda index=index: (index, torch.get_num_threads()) for index in range(2)])
    assert [index for index, _ in order] == [0, 1]
    assert all(threads == max(1, torch.get_num_threads() // 2) for _, threads in order)
    assert side_by_side([threading.current_thread]) == [threading.current_thread()]  # one task: no thread

    def fails(message):
        raise ValueError(message)
    with pytest.raises(ValueError, match="first"):
        side_by_side([lambda: fails("first"), lambda: fails("second")])
    streamed = copy.deepcopy(model)
    streamed.hf_device_map = {"": "cpu"}
    assert worker_count(streamed) == 1
    assert worker_count(model) == min(2, torch.get_num_threads())
    monkeypatch.setattr(guard, "available_bytes", lambda: 4 * 1000)  # a second batch of 1,001 bytes does not fit
    assert worker_count(model, batch_bytes=1001) == 1
    assert worker_count(model, batch_bytes=1000) == min(2, torch.get_num_threads())
