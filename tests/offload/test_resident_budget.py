"""The cap bounds the layer-by-layer route's peak: the device map keeps resident at most the
planner's budget (the cap less one block read and compressed and one window's work), summed here
from the loaded model's tensors on a 4-block Llama built from a config."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memopt_core.config import ModelSpec, OffloadConfig
from memopt_core.offload.streamed import load_streamed
from memopt_core.planning.layer_by_layer import estimate_peak

CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=1000, max_position_embeddings=512, tie_word_embeddings=True)
EMBEDDINGS = 1000 * 64 * 4
# attention q, o 64x64 and k, v 64x32, MLP 3 x 64 x 128, two norms of 64: what accelerate sizes a block at
BLOCK = (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) * 4
WEIGHTS = EMBEDDINGS + 4 * BLOCK + 64 * 4  # and the final norm
NO_TOKENIZER = object()  # the map is what is tested: no tokenizer is read


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("four-blocks")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(path)
    return path


def _resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of the persistent tensors held in memory (not on the meta device), tied ones once."""
    held = {t.data_ptr(): t.numel() * t.element_size()
            for t in model.state_dict(keep_vars=True).values() if t.device.type != "meta"}
    return sum(held.values())


def _load(folder, budget: int):
    return load_streamed(ModelSpec(str(folder)), OffloadConfig(max_memory=10**9), budget, tokenizer=NO_TOKENIZER)


@pytest.mark.parametrize("blocks", [0, 1, 2])
def test_whole_blocks_stay_resident_within_the_budget_and_use_it(folder, blocks):
    """At most one block of the budget is left over: accelerate's own room for a block read from
    disk is not reserved a second time."""
    budget = EMBEDDINGS + blocks * BLOCK + BLOCK // 2
    streamed = _load(folder, budget)
    resident = _resident_bytes(streamed.loaded.model)
    assert budget - BLOCK < resident <= budget
    assert resident == streamed.resident_bytes == streamed.describe()["resident_bytes"]
    assert (streamed.describe()["resident_budget"], streamed.max_memory) == (budget, 10**9)  # the cap stays the user's
    placement = [streamed.device_map[f"model.layers.{i}"] for i in range(4)]
    assert placement == ["cpu"] * blocks + ["disk"] * (4 - blocks)


def test_weights_less_than_a_block_over_the_budget_all_stay(folder):
    """Then nothing is read from disk, so the room the budget left for a block read is theirs."""
    streamed = _load(folder, WEIGHTS - BLOCK // 2)
    assert streamed.streamed_modules == [] and _resident_bytes(streamed.loaded.model) == WEIGHTS


def test_under_the_planners_budget_the_cap_bounds_the_peak(folder):
    """For caps from the floor to the whole model beside one window, the map holds what the plan
    counts: within the budget while blocks stream (the plan adds one block read and compressed and
    one window, reaching the cap), or every weight beside one window within the cap."""
    working = estimate_peak(folder, 4, 1).working_bytes
    floor = EMBEDDINGS + 2 * estimate_peak(folder, 4, 1).block_bytes + working
    streams = []
    for cap in range(floor, WEIGHTS + working + BLOCK, BLOCK // 3):
        plan = estimate_peak(folder, 4, cap)
        assert plan.total_bytes == cap if plan.streamed_bytes else plan.total_bytes <= cap
        streamed = _load(folder, plan.resident_budget_bytes)
        resident = _resident_bytes(streamed.loaded.model)
        if streamed.streamed_modules:
            assert resident <= plan.resident_budget_bytes == cap - 2 * plan.block_bytes - working, cap
        else:
            assert resident + working <= cap and resident == WEIGHTS, cap
        streams.append(bool(streamed.streamed_modules))
    assert streams[0] and not streams[-1]  # the range runs from blocks streamed to none
