"""The planner's peak for the layer-by-layer route, checked by hand, and the guard's offer of it."""
import pytest

from memopt_core.config import OffloadConfig
from memopt_core.errors import ResourceError
from memopt_core.planning import guard
from memopt_core.planning.layer_by_layer import estimate_peak, suggest_cap
from memopt_core.planning.presets import load_preset

TINY = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "tie_word_embeddings": True, "max_position_embeddings": 512}
GIB = 2**30


def test_peak_by_hand_for_a_tiny_llama():
    # attention per block: q, o 64x64 and k, v 64x32 (2 KV heads of 16) = 12,288; MLP 3 x 64 x 128 = 24,576;
    # norms 2 x 64 per block + 64; tied embeddings 1000 x 64.
    block = (12_288 + 24_576) * 4
    weights = (64_000 + 2 * (12_288 + 24_576) + 5 * 64) * 4
    # one 512-token window: (4 x 64 + 2 x 128) x 4 bytes per token, the head's fp32 output for one
    # slice of positions and 3 more slices being scored: 2**21 elements each, capped at the whole
    # window's logits (512 x 1000) here
    working = 512 * (4 * 64 + 2 * 128) * 4 + 4 * 512 * 1000 * 4
    peak = estimate_peak(TINY, 4, max_memory=100_000)
    assert (peak.weights_bytes, peak.block_bytes, peak.embedding_bytes) == (weights, block, 64_000 * 4)
    # the cap is below the embeddings too: they are read from disk at each forward
    assert peak.streamed_bytes == 2 * block + 64_000 * 4
    assert peak.working_bytes == working
    assert peak.total_bytes == 100_000 + 2 * block + 64_000 * 4 + working

    roomy = estimate_peak(TINY, 4, max_memory=10 * weights)
    assert (roomy.resident_bytes, roomy.streamed_bytes) == (weights, 0)  # it all fits: nothing streamed


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


def test_suggested_cap_is_the_largest_whose_peak_fits():
    usable = 10_000_000  # leaves a cap between the embeddings (256 KB) and the whole model (552 KB)
    peak = suggest_cap(TINY, 4, usable)
    assert peak.total_bytes == usable and peak.max_memory >= peak.embedding_bytes  # the embeddings stay resident
    assert estimate_peak(TINY, 4, peak.max_memory + 1).total_bytes > usable
    assert suggest_cap(TINY, 4, 9_700_000) is None  # one window's work and one block leave no room for them


def test_the_guard_offers_the_layer_by_layer_route_with_its_peak():
    config = load_preset("llama-3-8b")
    with pytest.raises(ResourceError) as refused:
        guard.check_load_fits(config, "float32", "llama-3-8b", available=20 * GIB)
    message = str(refused.value)
    assert "needs about 29.92 GiB" in message and "run --max-memory" in message
    cap_text = message.split("--max-memory ")[1].split()[0]
    cap = OffloadConfig.from_text(cap_text).max_memory
    peak = estimate_peak(config, 4, cap)
    assert f"peak estimate {peak.total_bytes / GIB:.2f} GiB" in message
    assert guard.required_bytes(peak.total_bytes) <= 20 * GIB  # the offer passes the guard's own margin

    with pytest.raises(ResourceError, match="even layer by layer"):
        guard.check_load_fits(config, "float32", "llama-3-8b", available=3 * GIB)
