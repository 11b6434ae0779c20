"""Several sessions sharing one cached original at once (as the dashboard's cache_resource does):
each gets what it gets alone, and the original keeps its weight checksum."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.loading.models import weights_checksum
from memopt_core.runs.workbench import Workbench

EVAL = EvalConfig(seq_len=32, max_tokens=128, gen_tokens=3, zero_shot=False)
SETTINGS = [RunConfig(ModelSpec("tiny-llama"), prune=p, quant=q, eval=EVAL) for p, q in (
    (None, QuantConfig(bits=4)), (PruneConfig(ratio=0.5), None),
    (PruneConfig(pattern="2:4"), QuantConfig(bits=8, granularity="group", group_size=32)),
    (None, QuantConfig(bits=3, symmetric=False)))]


def _figures(result):
    return (result.compressed["perplexity"], result.compressed["kl_divergence"], result.memory.stored_bytes,
            result.sparsity, result.compressed["generation"]["text"])


@pytest.mark.slow
def test_four_concurrent_sessions_match_their_solo_runs():
    shared = Workbench.load(ModelSpec("tiny-llama"))
    checksum = weights_checksum(shared.loaded.model)
    alone = [_figures(shared.run(config)) for config in SETTINGS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda config: _figures(shared.run(config)), SETTINGS))
    for solo, concurrent in zip(alone, together):
        assert concurrent[2:] == solo[2:]
        assert concurrent[:2] == pytest.approx(solo[:2], rel=1e-5)
    assert weights_checksum(shared.loaded.model) == checksum
