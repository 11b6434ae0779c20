"""The layer-by-layer route against the in-memory one on the tiny Llama (built from a config):
a cap below the model's size must change where tensors live, never a figure or a code."""
import json

import pytest
import torch

from memopt_core.compression.layers import QuantLinear
from memopt_core.config import CalibConfig, EvalConfig, ModelSpec, OffloadConfig, PruneConfig, QuantConfig, RunConfig
from memopt_core.errors import ConfigError, ModelLoadError
from memopt_core.evaluation.logit_slices import slice_rows
from memopt_core.evaluation.progressive import evaluate_causal_lm
from memopt_core.loading import bundled
from memopt_core.loading.models import load_model
from memopt_core.offload.layer_by_layer import planned_peak, run_layer_by_layer
from memopt_core.offload.streamed import load_streamed
from memopt_core.runs.workbench import Workbench

SMALL_EVAL = EvalConfig(seq_len=64, max_tokens=256, gen_tokens=4, zero_shot=False)
TINY = ModelSpec("tiny-llama")
# the tiny Llama by hand: tied embeddings 49,152 x 64; per block attention q, o 64x64 and k, v 64x32,
# MLP 3 x 64 x 128, two norms of 64; float32
EMBEDDINGS = 49_152 * 64 * 4
BLOCK = (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) * 4
NOTHING = OffloadConfig(max_memory=1_000_000)  # below the floor: all of it is read from disk per forward
# A resident budget of the embeddings, no block. With two blocks, blocks stream only while the budget
# is below the weights less two blocks (the planner's room for one block read and compressed):
# the embeddings plus less than the blocks' norms (2 x 2 x 64 floats); above that the model fits.
EMBEDDINGS_ONLY = EMBEDDINGS + 512


def _cap(config: RunConfig, budget: int) -> OffloadConfig:
    """The cap that leaves ``budget`` bytes to resident weights in ``config``'s run: the budget plus
    the reserve (one block read and compressed, the run's working memory)."""
    working = planned_peak(bundled.tiny_folder("tiny-llama"), config, NOTHING).working_bytes
    return OffloadConfig(max_memory=budget + 2 * BLOCK + working)


@pytest.fixture(scope="module")
def bench():
    return Workbench.load(TINY)


def _packed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in model.state_dict().items()
            if name.rpartition(".")[2] in ("packed", "scale", "zero", "mask")}


def _same_run(in_memory, layered) -> None:
    """Every figure of the two runs equal (float tolerance for the sums over windows)."""
    for key in ("perplexity", "mean_nll", "top1_accuracy", "kl_divergence", "top1_agreement"):
        assert layered.compressed[key] == pytest.approx(in_memory.compressed[key], rel=1e-6, abs=1e-9), key
        assert layered.baseline.get(key) == pytest.approx(in_memory.baseline.get(key), rel=1e-6, abs=1e-9), key
    assert layered.compressed["generation"] == in_memory.compressed["generation"]
    assert layered.memory.stored_bytes == in_memory.memory.stored_bytes
    assert layered.memory.dense_bytes == in_memory.memory.dense_bytes
    assert layered.memory.bits_per_weight == pytest.approx(in_memory.memory.bits_per_weight, rel=1e-12)
    assert layered.sparsity == pytest.approx(in_memory.sparsity, rel=1e-12)
    assert [r["name"] for r in layered.layers] == [r["name"] for r in in_memory.layers]
    for a, b in zip(in_memory.layers, layered.layers):
        assert (b["zeros"], b["stored_bytes"], b["dense_bytes"]) == (a["zeros"], a["stored_bytes"], a["dense_bytes"])
        assert b["sqnr_db"] == pytest.approx(a["sqnr_db"], rel=1e-6)


@pytest.mark.slow
def test_rtn_under_a_cap_equals_in_memory_and_saves_a_loadable_model(bench, tmp_path):
    config = RunConfig(TINY, prune=PruneConfig(ratio=0.5), quant=QuantConfig(bits=4, granularity="group", group_size=32),
                       eval=SMALL_EVAL)
    in_memory = bench.run(config)
    budget = EMBEDDINGS_ONLY
    cap = _cap(config, budget)
    layered = run_layer_by_layer(config, cap, save_dir=str(tmp_path / "saved"))
    _same_run(in_memory, layered)

    placement = layered.execution["original"]["device_map"]
    assert placement["model.embed_tokens"] == "cpu"
    assert [placement[f"model.layers.{i}"] for i in range(2)] == ["disk", "disk"]  # every block streams
    assert layered.execution["route"] == "layer-by-layer" and layered.memory.measured_bytes > 0
    assert layered.execution["planned_peak"]["max_memory"] == layered.execution["max_memory"] == cap.max_memory
    assert layered.execution["resident_budget"] == layered.execution["original"]["resident_budget"] == budget
    assert layered.execution["original"]["resident_bytes"] == EMBEDDINGS

    compressed, _ = bench.compress(config)
    saved = load_model(ModelSpec(str(tmp_path / "saved")))  # `run --model DIR`, in memory
    expected, got = _packed(compressed.model), _packed(saved.model)
    assert expected.keys() == got.keys() and len(expected) == 2 * 7 * 2  # 2 blocks x 7 Linears x (codes, scales)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    shards = json.loads((tmp_path / "saved" / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) == 2 + 2  # one shard per block, then embeddings and final norm
    manifest = json.loads((tmp_path / "saved" / "memopt.json").read_text())
    assert manifest["run"]["compressed"]["perplexity"] == pytest.approx(in_memory.compressed["perplexity"])


@pytest.mark.slow
def test_gptq_with_every_module_on_disk_equals_in_memory(bench):
    config = RunConfig(TINY, quant=QuantConfig(method="gptq", bits=4), eval=SMALL_EVAL,
                       calib=CalibConfig(samples=4, seq_len=64))
    in_memory = bench.run(config)
    layered = run_layer_by_layer(config, NOTHING)
    _same_run(in_memory, layered)
    assert set(layered.execution["original"]["device_map"].values()) == {"disk"}
    assert layered.protocol["calibration"] == in_memory.protocol["calibration"]


@pytest.mark.slow
def test_sparsegpt_alone_layer_by_layer_equals_in_memory(bench):
    """Calibrated pruning without quantization: the walk, then bitmask storage, one block at a time."""
    config = RunConfig(TINY, prune=PruneConfig(method="sparsegpt", pattern="2:4"), eval=SMALL_EVAL,
                       calib=CalibConfig(samples=4, seq_len=64))
    in_memory = bench.run(config)
    layered = run_layer_by_layer(config, _cap(config, EMBEDDINGS_ONLY))
    _same_run(in_memory, layered)
    assert layered.sparsity == pytest.approx(0.5)
    placement = layered.execution["original"]["device_map"]
    assert placement["model.embed_tokens"] == "cpu" and placement["model.layers.0"] == "disk"


@pytest.mark.slow
def test_wanda_then_rtn_layer_by_layer_equals_in_memory(bench):
    """Wanda scores weights by the block's input norms: the inputs captured block by block from the
    previous compressed block must be the in-memory walk's, or the masks (and zeros) would differ."""
    config = RunConfig(TINY, prune=PruneConfig(method="wanda", ratio=0.5), quant=QuantConfig(bits=8),
                       eval=SMALL_EVAL, calib=CalibConfig(samples=4, seq_len=64))
    in_memory = bench.run(config)
    layered = run_layer_by_layer(config, NOTHING)
    _same_run(in_memory, layered)
    assert layered.sparsity == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_a_save_streams_back_with_the_same_outputs(bench, tmp_path):
    config = RunConfig(TINY, quant=QuantConfig(bits=3), eval=SMALL_EVAL)
    bench.run(config, save_dir=str(tmp_path / "saved"))  # the in-memory route's single-file save
    spec = ModelSpec(str(tmp_path / "saved"))
    whole, streamed = load_model(spec), load_streamed(spec, NOTHING, 0)
    assert all(isinstance(streamed.loaded.model.get_submodule(n), QuantLinear)
               for n in ("model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj"))
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(whole.model(input_ids=ids).logits, streamed.loaded.model(input_ids=ids).logits)


def test_streamed_evaluation_never_makes_a_windows_whole_logits():
    """The streamed model's figures are the in-memory model's, bit for bit, and its head (read from
    disk) only ever returns one slice of positions: 42 of a window's 63 here (49,152-word vocabulary)."""
    ids = torch.randint(0, 49152, (3, 64), generator=torch.Generator().manual_seed(0))
    whole, streamed = load_model(TINY).model, load_streamed(TINY, NOTHING, 0).loaded.model
    assert streamed.hf_device_map["lm_head"] == "disk"
    rows: list[int] = []
    streamed.lm_head.register_forward_hook(lambda module, args, out: rows.append(out.shape[-2]))
    expected, got = evaluate_causal_lm(whole, ids, kl_top_k=None), evaluate_causal_lm(streamed, ids, kl_top_k=None)
    assert got[0].perplexity == expected[0].perplexity and torch.equal(got[1].log_probs, expected[1].log_probs)
    assert max(rows) == slice_rows(streamed) == 42 and sum(rows) == 3 * 63


def test_settings_that_need_every_layer_at_once_are_refused_before_loading():
    config = RunConfig(TINY, prune=PruneConfig(method="magnitude-global", ratio=0.5), eval=SMALL_EVAL)
    with pytest.raises(ConfigError, match="magnitude-global ranks every layer at once"):
        run_layer_by_layer(config, NOTHING)


def test_hub_ids_and_pickled_checkpoints_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="reads a local folder of safetensors"):
        load_streamed(ModelSpec("someone/some-model"), NOTHING, 0)
    model, tokenizer = bundled.build_tiny("tiny-llama")
    model.config.architectures = ["LlamaForCausalLM"]
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="reads safetensors only"):
        load_streamed(ModelSpec(str(tmp_path)), NOTHING, 0)
