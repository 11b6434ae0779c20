"""A whole run on the tiny bundled models: every reported figure checked against the weights."""
import pytest
import torch

from memopt_core.compression.layers import QuantLinear, SparseLinear
from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.loading.models import weights_checksum
from memopt_core.runs.workbench import Workbench

SMALL_EVAL = EvalConfig(seq_len=64, max_tokens=256, gen_tokens=4, zero_shot=False)


@pytest.fixture(scope="module")
def llama_bench():
    return Workbench.load(ModelSpec("tiny-llama"))


def _config(prune=None, quant=None, **eval_overrides):
    evaluation = EvalConfig(**{**SMALL_EVAL.__dict__, **eval_overrides})
    return RunConfig(ModelSpec("tiny-llama"), prune=prune, quant=quant, eval=evaluation)


def _held_bytes(model: torch.nn.Module) -> int:
    """Independent count: bytes of each distinct storage the model's tensors live in."""
    storages = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@pytest.mark.slow
def test_prune_and_quantize_figures_match_the_weights(llama_bench):
    before = weights_checksum(llama_bench.loaded.model)
    config = _config(PruneConfig(ratio=0.5), QuantConfig(bits=4, granularity="group", group_size=32))
    compressed, memory = llama_bench.compress(config)
    result = llama_bench.run(config)
    assert weights_checksum(llama_bench.loaded.model) == before  # the original is untouched

    zeros = numel = 0
    for name in compressed.target_names:
        module = compressed.model.get_submodule(name)
        assert isinstance(module, QuantLinear)
        codes = module.codes().reshape(module.out_features, module.in_features)
        zeros += int((codes == 2 ** (module.bits - 1)).sum())  # symmetric: the zero code is 2^(b-1)
        numel += codes.numel()
        weight = module.dequantized_weight()
        for group in weight.split(32, dim=1):
            assert all(len(torch.unique(row)) <= 16 for row in group)  # at most 2^bits values per group
    assert result.sparsity == pytest.approx(zeros / numel, abs=1e-12)
    assert result.sparsity >= 0.5  # pruned zeros stay zero; rounding may add a few more
    assert memory.stored_bytes == _held_bytes(compressed.model)
    assert memory.bits_per_weight == pytest.approx(4 + 16 / 32)  # int4 codes + an fp16 scale per 32


def test_pruning_alone_is_stored_as_bitmask_when_smaller(llama_bench):
    compressed, memory = llama_bench.compress(_config(PruneConfig(ratio=0.75)))
    modules = [compressed.model.get_submodule(n) for n in compressed.target_names]
    assert all(isinstance(m, SparseLinear) for m in modules)
    # 1 bit of mask + 32 bits for each of the 25% kept weights
    assert memory.bits_per_weight == pytest.approx(1 + 0.25 * 32, abs=0.01)
    assert memory.stored_bytes == _held_bytes(compressed.model)


@pytest.mark.slow
def test_quality_moves_with_bits(llama_bench):
    eight = llama_bench.run(_config(quant=QuantConfig(bits=8))).compressed
    two = llama_bench.run(_config(quant=QuantConfig(bits=2))).compressed
    assert eight["kl_divergence"] < two["kl_divergence"]
    assert eight["top1_agreement"] > two["top1_agreement"]
    assert eight["top1_agreement"] > 0.9


def test_baseline_is_computed_once_per_protocol(llama_bench):
    first = llama_bench.baseline(SMALL_EVAL)
    again = llama_bench.baseline(SMALL_EVAL)
    assert first is again
    assert llama_bench.baseline(EvalConfig(**{**SMALL_EVAL.__dict__, "seq_len": 32})) is not first


@pytest.mark.slow
def test_save_and_reload_give_the_same_figures(llama_bench, tmp_path):
    config = _config(PruneConfig(ratio=0.3), QuantConfig(bits=3, granularity="group", group_size=48,
                                                         symmetric=False))
    result = llama_bench.run(config, save_dir=str(tmp_path / "saved"))
    reloaded = Workbench.load(ModelSpec(str(tmp_path / "saved")))
    again = reloaded.run(RunConfig(ModelSpec(str(tmp_path / "saved")), eval=config.eval))
    assert again.baseline["perplexity"] == pytest.approx(result.compressed["perplexity"], rel=1e-5)
    assert again.memory.dense_bytes == result.memory.stored_bytes
    assert again.sparsity == pytest.approx(result.sparsity)
    assert reloaded.loaded.label.endswith("(random weights)")


@pytest.mark.slow
def test_notes_say_random_weights_and_simulated_memory(llama_bench):
    result = llama_bench.run(_config(quant=QuantConfig(bits=4, storage="fake")))
    assert any("random weights" in n for n in result.notes)
    assert any("simulated" in n for n in result.notes)
    assert result.memory.simulated
    assert result.memory.stored_bytes == result.memory.dense_bytes  # fake quantization saves nothing


@pytest.mark.slow
def test_encoder_run_reports_cosine_and_accuracy():
    bench = Workbench.load(ModelSpec("tiny-bert"))
    config = RunConfig(ModelSpec("tiny-bert"), quant=QuantConfig(bits=2), eval=SMALL_EVAL)
    result = bench.run(config)
    assert result.baseline["cosine_similarity"] == pytest.approx(1.0)
    assert result.compressed["cosine_similarity"] < 0.999
    assert 0.0 <= result.compressed["accuracy"] <= 1.0
    assert result.model["kind"] == "encoder"
