"""How many CPU threads the engine computes with inside the dashboard.

The dashboard's engine shares the machine with the Streamlit server (which redraws the live cards
every half second) and usually with the browser itself. torch's CPU kernels split each operation
over all cores and wait for the slowest part: when one of those cores is busy drawing the page,
every operation waits for it. Measured on 2 cores with one core kept busy, a SmolLM2 setting took
95 s with 2 threads and 37 s with 1 (32 s and 32 s with the machine idle). So the dashboard leaves
one core to the page: ``cores - 1`` threads, at least 1; ``$MEMOPT_THREADS`` sets the number.
The CLI keeps torch's default: nothing else competes there.
"""
from __future__ import annotations

import os

from memopt_core.errors import ConfigError

THREADS_ENV = "MEMOPT_THREADS"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def engine_threads() -> int:
    """``$MEMOPT_THREADS`` when set, else one core fewer than available (at least 1)."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return max(1, available_cores() - 1)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{THREADS_ENV}={text!r} must be a whole number of at least 1")
    return int(text)


def use_engine_threads() -> int:
    """Set torch's intra-op threads for this process to :func:`engine_threads`; returns the number."""
    import torch  # loaded with the first model, never by a page that shows stored results only

    threads = engine_threads()
    torch.set_num_threads(threads)
    return threads
