"""The planner's weight bytes (config only) agree with the stored bytes of a real compressed copy."""
import pytest

from memopt_core.config import ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.planning.planner import PlanConfig, estimate, load_preset
from memopt_core.runs.workbench import Workbench

SETTINGS = [  # (planner plan, the same setting for a real run)
    (PlanConfig(bits=4, group_size=64, base_dtype_bytes=4), QuantConfig(bits=4, granularity="group", group_size=64)),
    (PlanConfig(bits=8, group_size=None, base_dtype_bytes=4), QuantConfig(bits=8)),
    (PlanConfig(bits=3, group_size=128, symmetric=False, base_dtype_bytes=4),
     QuantConfig(bits=3, granularity="group", group_size=128, symmetric=False)),
]


@pytest.mark.real_model
@pytest.mark.parametrize("model", ["smollm2-135m", "minilm-l6"])
def test_planner_weight_bytes_match_a_real_run_within_one_percent(model):
    bench = Workbench.load(ModelSpec(model))
    for plan, quant in SETTINGS:
        planned = estimate(load_preset(model), plan).weights_bytes
        _, memory = bench.compress(RunConfig(ModelSpec(model), quant=quant))
        assert planned == pytest.approx(memory.stored_bytes, rel=0.01), (model, quant.label)


@pytest.mark.slow
def test_planner_bitmask_sparsity_matches_a_pruned_run():
    bench = Workbench.load(ModelSpec("minilm-l6"))
    planned = estimate(load_preset("minilm-l6"), PlanConfig(bits=16, sparsity=0.75, sparsity_format="bitmask",
                                                            base_dtype_bytes=4))
    _, memory = bench.compress(RunConfig(ModelSpec("minilm-l6"), prune=PruneConfig(ratio=0.75)))
    assert planned.weights_bytes == pytest.approx(memory.stored_bytes, rel=0.01)
