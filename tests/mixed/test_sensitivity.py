"""Sensitivity ranking and the mixed-precision planner."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from memopt_core.compression.layers import QuantLinear, weight_storage_bytes
from memopt_core.compression.walk import target_linears
from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.loading.models import LoadedModel, load_model, weights_checksum
from memopt_core.mixed.around_uniform import ContextSensitivity, changes_at, plan_and_compare
from memopt_core.mixed.charts import plan_bits_chart, sensitivity_bars
from memopt_core.mixed.plan import CANDIDATE_BITS, apply_plan, plan_bits, weight_bytes, widths_to_measure
from memopt_core.mixed.sensitivity import QualityProbe, measure_sensitivity, units_of
from memopt_core.primitives.quant import dequantize, quantize_weight

SMALL_EVAL = EvalConfig(max_tokens=256, seq_len=128, gen_tokens=0, zero_shot=False)
FRAGILE = "model.layers.1.mlp.down_proj"
FEEDS_FRAGILE = "model.layers.1.mlp.up_proj"
INT4 = QuantConfig(bits=4)


def _make_fragile(model: nn.Module, feeding: str, fragile: str) -> None:
    """Input 0 of ``fragile`` is made always 0 (``feeding`` Linear's row 0 zeroed: silu(g) * 0 and
    gelu(0) are 0), then ``fragile``'s column 0 gets huge weights. The function barely changes,
    but every row's quantization grid is stretched to hold them and the other weights round to 0."""
    feed = model.get_submodule(feeding)
    weight = feed.weight.detach().clone()
    weight[0] = 0
    feed.weight = nn.Parameter(weight, requires_grad=False)
    if feed.bias is not None:
        bias = feed.bias.detach().clone()
        bias[0] = 0
        feed.bias = nn.Parameter(bias, requires_grad=False)
    layer = model.get_submodule(fragile)
    weight = layer.weight.detach().clone()
    weight[:, 0] = 20 * weight.abs().max()  # 4 bits round the rest to 0; 8 bits keep ~13 levels
    layer.weight = nn.Parameter(weight, requires_grad=False)


def _loaded(model: nn.Module, kind: str = "causal-lm") -> LoadedModel:
    return LoadedModel(model=model, tokenizer=None, kind=kind, spec=ModelSpec("tiny-llama"), name="tiny",
                       is_random=True, num_params=sum(p.numel() for p in model.parameters()), source="test",
                       architecture=type(model).__name__)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Hundreds of tiny forwards: on two shared cores, extra threads only wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fragile_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # Weights 5x the usual init scale: layers then shape the predictions enough to be measured.
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1)
    model = LlamaForCausalLM(config).eval()
    _make_fragile(model, FEEDS_FRAGILE, FRAGILE)
    return _loaded(model)


@pytest.fixture(scope="module")
def probe(fragile_llama):
    """Text sampled from the model itself: a random model predicts random text no better than any
    other model, but on its own samples any change raises the expected NLL (it equals the KL)."""
    generator = torch.Generator().manual_seed(0)
    windows = torch.zeros(4, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(95):
            probs = fragile_llama.model(windows).logits[:, -1].softmax(-1)  # [4, vocab]
            windows = torch.cat([windows, torch.multinomial(probs, 1, generator=generator)], dim=1)
    return QualityProbe(fragile_llama, windows=windows)


def test_the_fragile_layer_ranks_first_and_the_original_is_untouched(fragile_llama, probe):
    before = weights_checksum(fragile_llama.model)
    result = measure_sensitivity(fragile_llama, INT4, probe=probe)
    assert weights_checksum(fragile_llama.model) == before
    assert result.ranking()[0] == FRAGILE and result.metric == "nll"
    assert len(result.rows) == len(target_linears(fragile_llama.model)) and result.seconds > 0
    top, second = result.rows[0], result.rows[1]
    assert top.delta > 5 * abs(second.delta) and top.kl == max(r.kl for r in result.rows)
    assert abs(top.score - probe.baseline - top.delta) < 1e-9 and probe.protocol["tokens"] == 4 * 96


def test_blocks_rank_too(fragile_llama, probe):
    result = measure_sensitivity(fragile_llama, INT4, by="block", probe=probe)
    assert result.ranking() == ["model.layers.1", "model.layers.0"]
    assert FRAGILE in result.rows[0].layers and len(result.rows[0].layers) == 7


def test_pruning_sensitivity_and_bad_requests(fragile_llama, probe):
    result = measure_sensitivity(fragile_llama, None, PruneConfig("magnitude", 0.5), probe=probe)
    assert result.setting == "magnitude 50%" and all(np.isfinite(r.delta) for r in result.rows)
    with pytest.raises(ConfigError, match="calibration"):
        measure_sensitivity(fragile_llama, QuantConfig(method="gptq", bits=4), probe=probe)
    with pytest.raises(ConfigError, match="unit"):
        units_of(["a.0.b"], "row")


@pytest.mark.slow
def test_encoders_rank_by_cosine_drop():
    loaded = load_model(ModelSpec("tiny-bert"))
    fragile = "encoder.layer.0.output.dense"
    _make_fragile(loaded.model, "encoder.layer.0.intermediate.dense", fragile)
    result = measure_sensitivity(loaded, INT4)
    assert result.metric == "cosine" and result.ranking()[0] == fragile and result.rows[0].delta > 0


@pytest.mark.parametrize("cfg", [QuantConfig(bits=3), QuantConfig(bits=4, granularity="group", group_size=48),
                                 QuantConfig(bits=2, symmetric=False, granularity="group", group_size=32),
                                 QuantConfig(bits=8, granularity="per-tensor")])
def test_weight_bytes_match_what_quantlinear_stores(cfg):
    linear = nn.Linear(100, 24)
    assert weight_bytes((24, 100), cfg) == weight_storage_bytes(QuantLinear.from_linear(linear, cfg))


def test_plan_is_the_best_combination_within_budget():
    rng = np.random.default_rng(0)
    shapes = {f"l{i}": (int(rng.integers(8, 64)), int(rng.integers(8, 64))) for i in range(5)}
    units = {name: [name] for name in shapes}
    bits = (2, 3, 4, 8)
    deltas = {b: {u: float(rng.exponential(1.0) / b ** 2) for u in units} for b in bits}
    base = QuantConfig(bits=4)
    numel = sum(o * i for o, i in shapes.values())
    for budget in (3.0, 3.7, 4.5, 6.0):
        plan = plan_bits(deltas, units, shapes, base, budget)
        best = min((sum(deltas[b][u] for b, u in zip(combo, units)), combo)
                   for combo in itertools.product(bits, repeat=len(units))
                   if sum(weight_bytes(shapes[u], QuantConfig(bits=b)) for b, u in zip(combo, units)) * 8 <= budget * numel)
        assert plan.bits_per_weight <= budget
        assert plan.predicted_delta == pytest.approx(best[0], rel=0.05)  # the budget grid may cost a sliver
    with pytest.raises(ConfigError, match="below the smallest plan"):
        plan_bits(deltas, units, shapes, base, 2.0)


def _context(changes: dict[int, dict[str, float]], units, shapes) -> ContextSensitivity:
    return ContextSensitivity(INT4, "layer", units, shapes, 0.1, changes, "kl", 0.0)


def test_widths_between_the_base_and_the_widest_scale_with_the_error_they_remove():
    g = torch.Generator().manual_seed(3)
    weights = {"a": torch.randn(8, 40, generator=g), "b": torch.randn(16, 40, generator=g)}
    units, shapes = {"u": ["a", "b"]}, {"a": (8, 40), "b": (16, 40)}
    context = _context({3: {"u": 0.5}, 4: {"u": 0.0}, 8: {"u": -0.2}}, units, shapes)
    out = changes_at(context, weights, (3, 4, 5, 6, 8))

    def energy(bits):
        return sum(float((dequantize(quantize_weight(w, QuantConfig(bits=bits))) - w).pow(2).sum())
                   for w in weights.values())

    assert out[3] == {"u": 0.5} and out[4] == {"u": 0.0} and out[8] == {"u": -0.2}
    for bits in (5, 6):
        share = (energy(4) - energy(bits)) / (energy(4) - energy(8))
        assert 0.7 < share < 1 and out[bits]["u"] == pytest.approx(-0.2 * share, rel=1e-5)
    with pytest.raises(ConfigError, match="was not measured"):
        changes_at(context, weights, (2, 3))


def test_plan_is_measured_around_uniform_and_beats_it_at_its_own_bytes(fragile_llama, probe):
    names = list(target_linears(fragile_llama.model))
    shapes = {n: tuple(fragile_llama.model.get_submodule(n).weight.shape) for n in names}
    uniform_bytes = sum(weight_bytes(s, INT4) for s in shapes.values())
    budget = 8 * uniform_bytes / sum(o * i for o, i in shapes.values())
    before, steps = weights_checksum(fragile_llama.model), []
    comparison = plan_and_compare(fragile_llama, INT4, budget, probe=probe,
                                  progress=lambda done, total, unit: steps.append((done, total)))
    plan, outcome, uniform, context = comparison.plan, comparison.outcome, comparison.uniform, comparison.sensitivity
    assert weights_checksum(fragile_llama.model) == before
    assert steps[-1] == (1, 1) and steps[0] == (0, 2 * len(names))  # 3 and 8 bits, one probe per layer
    assert sorted(context.changes) == [3, 4, 8] and plan.extra["extrapolated_bits"] == [5, 6]
    # the fragile layer, alone at 8 bits in the uniform 4-bit model, removes most of its loss
    assert context.changes[8][FRAGILE] == min(context.changes[8].values()) < -0.6 * context.uniform_loss
    assert plan.bits[FRAGILE] >= 6 and plan.stored_bytes <= uniform_bytes
    compressed = apply_plan(fragile_llama.model, plan).model
    assert all(isinstance(compressed.get_submodule(n), QuantLinear) and compressed.get_submodule(n).bits == bits
               for n, bits in plan.bits.items())
    assert comparison.uniform_plan.bits == {n: 4 for n in names} and uniform["stored_weight_bytes"] == uniform_bytes
    assert uniform["measured_loss"] == pytest.approx(context.uniform_loss) == uniform["predicted_loss"]
    assert outcome["stored_weight_bytes"] == plan.stored_bytes and plan.bits_per_weight <= budget
    assert outcome["measured_loss"] < 0.5 * uniform["measured_loss"]  # KL of the applied models, same probe
    assert outcome["predicted_loss"] == pytest.approx(
        context.uniform_loss + sum(changes_at(context, {n: fragile_llama.model.get_submodule(n).weight for n in names},
                                              (3, 4, 5, 6, 8))[plan.unit_bits[u]][u] for u in plan.units))
    assert {"predicted_perplexity", "measured_perplexity", "predicted_loss", "measured_loss"} <= set(outcome)
    assert json.dumps(comparison.to_dict(with_sensitivity=True))


def test_widths_measured_follow_the_budget():
    assert widths_to_measure(CANDIDATE_BITS, 4, 4.02) == (3, 8)
    assert widths_to_measure(CANDIDATE_BITS, 4, 3.0) == (2, 3, 8)
    assert widths_to_measure(CANDIDATE_BITS, 4, 2.2) == (2, 3, 8)
    assert widths_to_measure(CANDIDATE_BITS, 4, 7.5) == (8,)
    assert widths_to_measure((2, 3, 4), 4, 4.5) == (3,)


def test_charts_draw_the_ranking_and_the_plan(fragile_llama, probe):
    result = measure_sensitivity(fragile_llama, INT4, probe=probe).to_dict()
    figure = sensitivity_bars(result)
    drawn = {unit: kl for trace in figure.data for unit, kl in zip(trace.y, trace.x)}
    assert drawn == {row["unit"]: row["kl"] for row in result["rows"]}
    assert list(figure.layout.yaxis.categoryarray)[-1] == FRAGILE  # the most sensitive is drawn on top
    assert {trace.name for trace in figure.data} == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                    "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                    "mlp.down_proj"}
    plan = {"unit_bits": {"a": 2, "b": 8, "c": 2}, "bits_per_weight": 3.9, "budget_bpw": 4.0}
    bars = {unit: height for trace in plan_bits_chart(plan).data for unit, height in zip(trace.x, trace.y)}
    assert bars == plan["unit_bits"]


def test_cli(capsys):
    from memopt_core.cli import sensitivity as cli_sensitivity
    from memopt_core.cli.common import OneLineParser

    parser = OneLineParser(prog="memopt")
    cli_sensitivity.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sensitivity", "--model", "tiny-llama", "--bits", "4", "--by", "block",
                              "--max-tokens", "64", "--seq-len", "64", "--plan-bpw", "4.5", "--json"])
    assert args.handler(args) == 0
    output = json.loads(capsys.readouterr().out)
    assert [r["unit"] for r in output["sensitivity"]["rows"]] and output["sensitivity"]["by"] == "block"
    assert output["plan"]["bits_per_weight"] <= 4.5 and "measured_loss" in output["outcome"]
    assert output["uniform_plan"]["weights_by_bits"] == {"4": sum(r["params"] for r in output["sensitivity"]["rows"])}
    bad = parser.parse_args(["sensitivity", "--model", "tiny-llama"])
    with pytest.raises(ConfigError, match="--bits"):
        bad.handler(bad)
