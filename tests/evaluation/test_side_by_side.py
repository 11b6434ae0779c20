"""Work side by side: results in order, the first error raised, torch's thread count left as it
was, and how many workers a model gets."""
from __future__ import annotations

import copy
import threading

import pytest
import torch

from tiny_models import make_tiny_llama
from memopt_core.evaluation.side_by_side import side_by_side, worker_count
from memopt_core.planning import guard


def test_side_by_side_keeps_order_raises_the_first_error_and_counts_workers(monkeypatch):
    order = side_by_side([lambda index=index: (index, torch.get_num_threads()) for index in range(2)])
    assert [index for index, _ in order] == [0, 1]
    assert all(threads == max(1, torch.get_num_threads() // 2) for _, threads in order)
    assert side_by_side([threading.current_thread]) == [threading.current_thread()]  # one task: no thread

    def fails(message):
        raise ValueError(message)
    with pytest.raises(ValueError, match="first"):
        side_by_side([lambda: fails("first"), lambda: fails("second")])
    model = make_tiny_llama()
    streamed = copy.deepcopy(model)
    streamed.hf_device_map = {"": "cpu"}
    assert worker_count(streamed) == 1
    assert worker_count(model) == min(2, torch.get_num_threads())
    monkeypatch.setattr(guard, "available_bytes", lambda: 4 * 1000)  # a second batch of 1,001 bytes does not fit
    assert worker_count(model, batch_bytes=1001) == 1
    assert worker_count(model, batch_bytes=1000) == min(2, torch.get_num_threads())
