"""The real bundled SmolLM2-135M on a small token budget (Wikipedia, 1,024 tokens, 256-token windows)."""
import pytest

from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig
from memopt_core.runs.workbench import Workbench

pytestmark = pytest.mark.real_model

EVAL = EvalConfig(seq_len=256, max_tokens=1024, gen_tokens=0, zero_shot=False)


@pytest.fixture(scope="module")
def smollm2():
    return Workbench.load(ModelSpec("smollm2-135m"))


def _run(bench, quant):
    return bench.run(RunConfig(ModelSpec("smollm2-135m"), quant=quant, eval=EVAL))


def test_baseline_perplexity_is_sane(smollm2):
    baseline = smollm2.baseline(EVAL).reference.metrics
    assert 5.0 < baseline["perplexity"] < 40.0  # DESIGN.md: 13.02 on 16k tokens with 512-token windows
    assert baseline["tokens"] == 4 * 255


def test_int8_is_close_and_int2_is_far_worse(smollm2):
    baseline = smollm2.baseline(EVAL).reference.metrics["perplexity"]
    int8 = _run(smollm2, QuantConfig(bits=8))
    int2 = _run(smollm2, QuantConfig(bits=2))
    assert int8.compressed["perplexity"] == pytest.approx(baseline, rel=0.02)
    assert int2.compressed["perplexity"] > 10 * baseline
    rows = sum(layer["shape"][0] for layer in int8.layers)
    weights = sum(layer["shape"][0] * layer["shape"][1] for layer in int8.layers)
    assert int8.memory.bits_per_weight == pytest.approx(8 + 16 * rows / weights)  # one fp16 scale per row


def test_q4_1_grid_is_reproduced_exactly(smollm2):
    """The bundled weights were stored as GGUF Q4_1 (4-bit, groups of 32, fp16 scale and minimum):
    re-quantizing on that grid loses nothing. A lesson to show, not a quantizer's triumph."""
    result = _run(smollm2, QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False,
                                       zero_point="float"))
    baseline = smollm2.baseline(EVAL).reference.metrics["perplexity"]
    assert result.compressed["perplexity"] == pytest.approx(baseline, rel=1e-4)
    assert min(layer["sqnr_db"] for layer in result.layers) > 60
    assert result.memory.bits_per_weight == pytest.approx(4 + 32 / 32)  # fp16 scale + fp16 minimum per 32
