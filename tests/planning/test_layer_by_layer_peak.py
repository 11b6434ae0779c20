"""The planner's peak for the layer-by-layer route, checked by hand, and the guard's offer of it."""
import pytest

from memopt_core.config import OffloadConfig
from memopt_core.errors import ResourceError
from memopt_core.planning import guard
from memopt_core.planning.layer_by_layer import estimate_peak, suggest_cap
from memopt_core.planning.presets import load_preset

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "tie_word_embeddings": True, "max_position_embeddings": 512}
GIB = 2**30


# attention per block: q, o 64x64 and k, v 64x32 (2 KV heads of 16) = 12,288; MLP 3 x 64 x 128 = 24,576;
# norms 2 x 64 per block + 64; tied embeddings 1000 x 64; 8 blocks.
BLOCK = (12_288 + 24_576) * 4
EMBEDDINGS = 64_000 * 4
WEIGHTS = (64_000 + 8 * (12_288 + 24_576) + 17 * 64) * 4
# one 512-token window: (4 x 64 + 2 x 128) x 4 bytes per token, the head's fp32 output for one
# slice of positions and 3 more slices being scored: 2**21 elements each, capped at the whole
# window's logits (512 x 1000) here
WORKING = 512 * (4 * 64 + 2 * 128) * 4 + 4 * 512 * 1000 * 4


def test_the_cap_bounds_the_peak_and_leaves_the_rest_to_resident_weights():
    cap = WORKING + 2 * BLOCK + EMBEDDINGS + 100_000  # more than the floor, less than the model beside a window
    peak = estimate_peak(TINY, 4, max_memory=cap)
    assert (peak.weights_bytes, peak.block_bytes, peak.embedding_bytes, peak.head_bytes) == \
        (WEIGHTS, BLOCK, EMBEDDINGS, 0)
    assert peak.working_bytes == WORKING
    # reserved out of the cap: one block read from disk and its compressed copy, one window's work
    assert peak.resident_budget_bytes == cap - 2 * BLOCK - WORKING == EMBEDDINGS + 100_000
    assert (peak.resident_bytes, peak.streamed_bytes) == (EMBEDDINGS + 100_000, 2 * BLOCK)
    assert peak.total_bytes == cap


def test_an_untied_head_is_streamed_with_the_blocks_and_reserved_too():
    untied = {**TINY, "tie_word_embeddings": False}
    cap = WORKING + 2 * BLOCK + 2 * EMBEDDINGS + 100_000
    peak = estimate_peak(untied, 4, max_memory=cap)
    assert (peak.weights_bytes, peak.head_bytes) == (WEIGHTS + EMBEDDINGS, EMBEDDINGS)  # 1000 x 64 head
    assert peak.resident_budget_bytes == cap - 2 * BLOCK - EMBEDDINGS - WORKING == EMBEDDINGS + 100_000
    assert peak.total_bytes == cap


def test_below_the_floor_nothing_is_resident_and_the_peak_is_the_floor():
    floor = EMBEDDINGS + 2 * BLOCK + WORKING
    for cap in (100_000, floor - 1):  # the budget cannot hold the embeddings, which come first
        peak = estimate_peak(TINY, 4, max_memory=cap)
        assert peak.resident_bytes == 0 and peak.streamed_bytes == 2 * BLOCK + EMBEDDINGS
        assert peak.total_bytes == floor
    assert estimate_peak(TINY, 4, max_memory=floor).resident_bytes == EMBEDDINGS


def test_weights_that_fit_beside_one_window_stream_nothing():
    roomy = estimate_peak(TINY, 4, max_memory=WEIGHTS + WORKING)
    assert (roomy.resident_bytes, roomy.streamed_bytes, roomy.total_bytes) == (WEIGHTS, 0, WEIGHTS + WORKING)
    assert roomy.resident_budget_bytes == WEIGHTS
    tight = estimate_peak(TINY, 4, max_memory=WEIGHTS + WORKING - 1)  # one byte less: blocks stream
    assert tight.streamed_bytes == 2 * BLOCK and tight.total_bytes == WEIGHTS + WORKING - 1


def test_a_large_vocabulary_counts_slices_of_positions_not_the_windows_logits():
    # SmolLM2's shape of head: the scorer applies a Llama's head to 2**21 float32 elements (8 MiB)
    # of positions at a time, plus 3 copies of that slice while it is scored: never the window's
    # 512 x 49,152 logits (96 MiB)
    config = {**TINY, "vocab_size": 49_152}
    activations = 512 * (4 * 64 + 2 * 128) * 4
    assert estimate_peak(config, 4, max_memory=100_000).working_bytes == activations + 4 * 2**21 * 4
    # a head followed by soft-capping (Gemma 2) runs whole: its window's logits once, plus 3 slices
    gemma = {"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 49_152}
    working = estimate_peak(gemma, 4, max_memory=100_000).working_bytes
    assert working == activations + 512 * 49_152 * 4 + 3 * 2**21 * 4
    assert working // 2**20 == 121


def test_calibration_batch_through_one_block_counts_when_larger():
    tokens = 64 * 512
    peak = estimate_peak(TINY, 4, max_memory=100_000, calib_tokens=tokens)
    per_token = (4 * 64 + 2 * 128) * 4 + 2 * 64 * 4 + 128 * 4  # block intermediates, hidden in/out, widest input
    assert peak.working_bytes == tokens * per_token + 128 * 128 * 4


def test_suggested_cap_is_the_usable_memory_while_it_holds_the_floor():
    floor = EMBEDDINGS + 2 * BLOCK + WORKING
    usable = floor + 100_000
    peak = suggest_cap(TINY, 4, usable)
    assert peak.max_memory == peak.total_bytes == usable  # the cap bounds the peak: all of it can be given
    assert peak.resident_budget_bytes == EMBEDDINGS + 100_000  # the embeddings stay resident
    assert estimate_peak(TINY, 4, usable + 1).total_bytes > usable
    assert suggest_cap(TINY, 4, floor).total_bytes == floor
    assert suggest_cap(TINY, 4, floor - 1) is None  # one window's work and one block leave no room for them


def test_the_guard_offers_the_layer_by_layer_route_with_its_peak():
    config = load_preset("llama-3-8b")
    with pytest.raises(ResourceError) as refused:
        guard.check_load_fits(config, "float32", "llama-3-8b", available=20 * GIB)
    message = str(refused.value)
    assert "needs about 29.92 GiB" in message and "run --max-memory" in message
    cap_text = message.split("--max-memory ")[1].split()[0]
    cap = OffloadConfig.from_text(cap_text).max_memory
    peak = estimate_peak(config, 4, cap)
    assert peak.total_bytes == cap and peak.head_bytes > 0  # the cap bounds the peak, Llama 3's head streamed
    assert f"peak estimate {peak.total_bytes / GIB:.2f} GiB" in message
    assert guard.required_bytes(peak.total_bytes) <= 20 * GIB  # the offer passes the guard's own margin

    with pytest.raises(ResourceError, match="even layer by layer"):
        guard.check_load_fits(config, "float32", "llama-3-8b", available=3 * GIB)
