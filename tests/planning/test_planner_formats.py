"""The planner knows each format's bits per weight: its estimate equals the stored bytes of a real run."""
import pytest

from memopt_core.config import ModelSpec, QuantConfig, RunConfig
from memopt_core.planning.planner import PlanConfig, estimate, load_preset
from memopt_core.runs.workbench import Workbench

CASES = {"minilm-l6": [QuantConfig(format="q4_k"), QuantConfig(format="q6_k"), QuantConfig(format="nvfp4")],
         "smollm2-135m": [QuantConfig(format="nf4", double_quant=True), QuantConfig(format="mxfp4"),
                          QuantConfig(format="fp8-e4m3"), QuantConfig(format="q3_k")]}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CASES))
def test_planned_bits_per_weight_equal_a_real_runs(model):
    bench = Workbench.load(ModelSpec(model))
    for quant in CASES[model]:
        plan = PlanConfig(format=quant.format, double_quant=quant.double_quant, base_dtype_bytes=4)
        planned = estimate(load_preset(model), plan)
        _, memory = bench.compress(RunConfig(ModelSpec(model), quant=quant))
        assert planned.bits_per_weight == pytest.approx(memory.bits_per_weight, rel=1e-9), quant.label
        assert planned.weights_bytes == pytest.approx(memory.stored_bytes, rel=0.01), quant.label
