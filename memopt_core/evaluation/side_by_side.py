"""A few forwards side by side, each in its own thread with a share of torch's CPU threads.

Why: on CPU torch splits every operation of a forward across its threads, and the threads meet at
the end of each operation. When another process takes a core for a moment (the browser drawing the
page), every operation waits for the thread that lost its core. Two one-thread workers on separate
windows never wait for each other. Measured on SmolLM2 (2 cores, 8 windows of 512 tokens, the first
alone): a round of two windows took 3.6-3.8 s against 2.3-2.5 s for one window on both threads,
about 20% less per window, and a whole warm setting 2-17% less quiet; beside a process busy a fifth
of the time, side by side was 0-9% faster than one at a time (``bench/bench_live.py --parts
workers``; this machine's speed drifts, so each figure is a pair of interleaved runs). The cost: a
newer setting that cancels a run waits for the round in flight (two windows), not one window.

Two windows' activations are held at once, so a second worker runs only when its batch's logits
fit in a small share of free memory, and a model streamed under a memory cap (accelerate's hooks
move weights in and out, which is not safe from two threads), or one on a GPU (one stream does the
work), keeps one forward at a time.

Results do not depend on the split: a product over one thread or two sums in the same order here
(checked bit for bit on SmolLM2), and each worker's rows are kept in window order by the caller.
"""
from __future__ import annotations

import threading
from typing import Callable, TypeVar

import torch
from torch import nn

from memopt_core.evaluation.compute import model_device
from memopt_core.planning import guard

# More workers would hold more windows' activations at once for little gain over two.
MAX_WORKERS = 2
# Another worker's batch may take at most this share of free host memory (its float32 logits, the
# log-softmax of a slice and the forward's activations: ``batch_bytes`` counts three logits' worth).
SHARE_OF_FREE_MEMORY = 0.25

Result = TypeVar("Result")


def worker_count(model: nn.Module, batch_bytes: int = 0) -> int:
    """How many forwards of ``model`` may run side by side: up to MAX_WORKERS on CPU while each
    further batch (``batch_bytes`` of working memory) fits in SHARE_OF_FREE_MEMORY of free memory;
    one at a time on a GPU or for a model streamed under a memory cap (``hf_device_map``)."""
    if model_device(model).type != "cpu" or getattr(model, "hf_device_map", None):
        return 1
    workers = max(1, min(MAX_WORKERS, torch.get_num_threads()))
    room = int(SHARE_OF_FREE_MEMORY * guard.available_bytes()) // max(1, batch_bytes)
    return max(1, min(workers, 1 + room))


def side_by_side(tasks: list[Callable[[], Result]]) -> list[Result]:
    """Run ``tasks`` at once, each in a new thread with an equal share of the caller's torch
    threads, and return their results in order; a single task runs in the caller's thread with all
    of them. The first task's exception (in task order) is raised after all have ended. Torch's
    thread count is the caller's again afterwards (setting it in a worker changes the default that
    new threads start from)."""
    if len(tasks) <= 1:
        return [task() for task in tasks]
    threads = torch.get_num_threads()
    share = max(1, threads // len(tasks))
    outcomes: list[tuple[bool, object]] = [(False, None)] * len(tasks)

    def work(index: int) -> None:
        torch.set_num_threads(share)
        try:
            outcomes[index] = (True, tasks[index]())
        except BaseException as error:  # re-raised in the caller's thread below
            outcomes[index] = (False, error)

    workers = [threading.Thread(target=work, args=(index,), name=f"memopt-forward-{index}")
               for index in range(len(tasks))]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        torch.set_num_threads(threads)
    for succeeded, value in outcomes:
        if not succeeded:
            raise value  # type: ignore[misc]
    return [value for _, value in outcomes]  # type: ignore[misc]
