"""What-if planner: counts from configs on the meta device, byte formulas, presets, refusals.

Reference figures are hand-computed (arithmetic written out) or published parameter counts.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from memopt_core.compression.walk import target_linears
from memopt_core.errors import ConfigError, DataError, MemoptError
from memopt_core.planning import counting, planner
from memopt_core.planning import presets as planner_presets
from memopt_core.planning.planner import (GIB, PlanConfig, count_parameters, estimate, fits_on, format_gib, group_count,
                                          layer_bits, list_presets, load_config, load_preset)

# Tiny Llama: V=1000, h=64, I=160, L=3 layers, 8 heads of 8, 2 KV heads (GQA).
V, H, I, L, HEADS, KV, HD = 1000, 64, 160, 3, 8, 2, 8
TINY = {"model_type": "llama", "vocab_size": V, "hidden_size": H, "intermediate_size": I, "num_hidden_layers": L,
        "num_attention_heads": HEADS, "num_key_value_heads": KV, "max_position_embeddings": 512,
        "tie_word_embeddings": True}
EMBED = V * H                                   # 64,000
ATTN_PER_LAYER = H * H + 2 * H * (KV * HD) + H * H   # q + k + v + o = 4096 + 2*1024 + 4096 = 10,240
MLP_PER_LAYER = 3 * H * I                       # gate, up, down = 30,720
NORMS = L * 2 * H + H                           # 2 RMSNorms per layer + final norm = 448
TARGETED = L * (ATTN_PER_LAYER + MLP_PER_LAYER)  # 122,880

# Published parameter counts (all exact integers, none rounded: the test demands equality).
PUBLISHED = {"llama-3-8b": 8_030_261_248, "llama-3-70b": 70_553_706_496, "mistral-7b": 7_241_732_096,
             "qwen2.5-7b": 7_615_616_512, "gemma-2-9b": 9_241_705_984, "phi-3-mini": 3_821_079_552,
             "gpt2": 124_439_808, "bert-base-uncased": 109_482_240, "smollm2-135m": 134_515_008,
             "minilm-l6": 22_713_216}


# ---------------------------------------------------------------- counting

@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_counts_by_hand(tied):
    counts = count_parameters({**TINY, "tie_word_embeddings": tied})
    lm_head = 0 if tied else V * H
    assert counts.embeddings == EMBED
    assert counts.attention == L * ATTN_PER_LAYER == 30_720
    assert counts.mlp == L * MLP_PER_LAYER == 92_160
    assert counts.norms == NORMS
    assert counts.lm_head == lm_head
    assert counts.other == 0
    assert counts.total == EMBED + L * (ATTN_PER_LAYER + MLP_PER_LAYER) + NORMS + lm_head  # 187,328 tied
    assert counts.targeted == TARGETED and counts.untargeted == counts.total - TARGETED
    assert counts.tied_embeddings is tied and counts.is_causal


def test_meta_count_matches_a_real_model_and_the_walker():
    config = LlamaConfig(**{**{k: v for k, v in TINY.items() if k != "model_type"}, "tie_word_embeddings": False})
    real = LlamaForCausalLM(config)
    counts = count_parameters(config)
    assert counts.total == sum(p.numel() for p in real.parameters())
    assert counts.targeted == sum(m.weight.numel() for m in target_linears(real).values())
    shapes = {(t.component, t.out_features, t.in_features): t.count for t in counts.target_layers}
    assert shapes == {("attention", 64, 64): 2 * L, ("attention", 16, 64): 2 * L,
                      ("mlp", 160, 64): 2 * L, ("mlp", 64, 160): L}


def test_minilm_bert_counts_by_hand():
    v, p, t, h, i, layers = 30522, 512, 2, 384, 1536, 6
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h  # q,k,v,o; intermediate; output; 2 LayerNorms
    total = (v + p + t) * h + 2 * h + layers * layer + (h * h + h)     # embeddings + their LayerNorm + pooler
    counts = count_parameters(load_preset("minilm-l6"))
    assert total == 22_713_216 == counts.total
    assert counts.embeddings == (v + p + t) * h
    assert counts.other == h * h + h            # the pooler
    assert counts.targeted == layers * (4 * h * h + 2 * h * i)
    assert not counts.is_causal and counts.lm_head == 0


def test_gpt2_conv1d_layers_are_targeted():
    counts = count_parameters(load_preset("gpt2"))
    h, layers = 768, 12
    # attn.c_attn [h -> 3h], attn.c_proj [h -> h], mlp.c_fc [h -> 4h], mlp.c_proj [4h -> h]
    assert counts.targeted == layers * (h * 3 * h + h * h + 2 * h * 4 * h) == 84_934_656
    assert counts.lm_head == 0 and counts.tied_embeddings
    shapes = {(t.component, t.out_features, t.in_features) for t in counts.target_layers}
    assert ("attention", 3 * h, h) in shapes and ("mlp", h, 4 * h) in shapes  # [out, in], not Conv1D's [in, out]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_match_published_counts(name):
    counts = count_parameters(load_preset(name))
    assert counts.total == PUBLISHED[name]
    assert planner_presets.preset_info(name)["published_params"] == PUBLISHED[name]


def test_preset_list_and_copies():
    assert set(list_presets()) == set(PUBLISHED)
    first = load_preset("gpt2")
    first["n_layer"] = 1
    assert load_preset("gpt2")["n_layer"] == 12 and "_memopt" not in first


# ---------------------------------------------------------------- bytes

def test_bits_per_weight_int4_g128():
    sym = layer_bits(4096, 4096, PlanConfig(bits=4, group_size=128))
    asym = layer_bits(4096, 4096, PlanConfig(bits=4, group_size=128, symmetric=False))
    n = 4096 * 4096
    assert sum(sym.values()) / n == 4.125   # 4 + 16/128
    assert sum(asym.values()) / n == 4.25   # 4 + (16 + 16)/128
    preset = load_preset("llama-3-8b")   # every in_features (4096, 14336) is a multiple of 128
    assert estimate(preset, PlanConfig(bits=4, group_size=128)).bits_per_weight == 4.125
    assert estimate(preset, PlanConfig(bits=4, group_size=128, symmetric=False)).bits_per_weight == 4.25


def test_ragged_last_group_counts_as_a_group():
    assert group_count(100, 32) == 4 and group_count(128, 32) == 4 and group_count(100, None) == 1
    bits = layer_bits(10, 100, PlanConfig(bits=4, group_size=32))
    assert bits == {"values": 10 * 100 * 4, "scales": 10 * 4 * 16, "mask": 0}
    # SmolLM2 at g256: in 576 -> 3 groups (2.25 rounded up), in 1536 -> 6. Scales per layer:
    # q,o 576 rows*3 + k,v 192*3 + gate,up 1536*3 + down 576*6 = 17,280; weights per layer 3,538,944.
    est = estimate(load_preset("smollm2-135m"), PlanConfig(bits=4, group_size=256))
    assert est.bits_per_weight == 4 + 17_280 * 16 / 3_538_944 == 4.078125


def test_weights_bytes_by_hand():
    est = estimate(load_preset("llama-3-8b"), PlanConfig(bits=4, group_size=128))
    targeted, untargeted = 6_979_321_856, 8_030_261_248 - 6_979_321_856
    assert est.targeted_params == targeted
    assert est.weights_bytes == targeted * 4.125 / 8 + untargeted * 2 == 5_700_591_616
    assert est.scale_bytes == targeted // 128 * 2
    baseline = estimate(load_preset("qwen2.5-7b"), PlanConfig(bits=16))
    assert baseline.weights_bytes == 7_615_616_512 * 2 and baseline.bits_per_weight == 16  # biases included


def test_sparsity_needs_a_bitmask_to_save_memory():
    preset = load_preset("llama-3-8b")
    plain = estimate(preset, PlanConfig(bits=4))
    dense = estimate(preset, PlanConfig(bits=4, sparsity=0.5))
    bitmask = estimate(preset, PlanConfig(bits=4, sparsity=0.5, sparsity_format="bitmask"))
    assert dense.weights_bytes == plain.weights_bytes
    assert any("saves no memory" in note for note in dense.notes)
    assert bitmask.bits_per_weight == 1 + 0.5 * 4 + 16 / 128   # mask + non-zero values + scales = 3.125
    assert bitmask.mask_bytes == 6_979_321_856 // 8


def test_kv_cache_gqa_llama3_8b_32k_is_4_gib():
    est = estimate(load_preset("llama-3-8b"), PlanConfig(context=32768))
    assert est.kv_cache_bytes == 2 * 32 * 8 * 128 * 32768 * 2 == 4 * GIB  # K,V x layers x KV heads x head_dim x T x 2 B
    assert estimate(load_preset("llama-3-8b"), PlanConfig(context=32768, kv_bits=8, batch=2)).kv_cache_bytes == 4 * GIB
    assert estimate(load_preset("llama-3-8b"), PlanConfig(context=32768, kv_bits=4)).kv_cache_bytes == GIB


def test_kv_cache_uses_explicit_head_dim():
    # Gemma-2-9B: head_dim 256 although 3584 / 16 heads = 224; 42 layers, 8 KV heads.
    est = estimate(load_preset("gemma-2-9b"), PlanConfig(context=4096))
    assert est.kv_cache_bytes == 2 * 42 * 8 * 256 * 4096 * 2


def test_encoder_has_no_kv_cache_and_no_logits():
    plan = PlanConfig(context=128, batch=4)
    est = estimate(load_preset("minilm-l6"), plan)
    assert est.kv_cache_bytes == 0
    assert est.activation_bytes == 4 * 128 * (4 * 384 + 2 * 1536) * 2
    assert "encoder: no KV cache" in est.notes


def test_activations_and_total_by_hand():
    plan = PlanConfig(context=100, batch=2)
    est = estimate(TINY, plan)
    assert est.activation_bytes == 2 * 100 * (4 * H + 2 * I) * 2 + 2 * 100 * V * 4   # hidden states + fp32 logits
    assert est.kv_cache_bytes == 2 * 2 * 100 * L * KV * HD * 2
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.activation_bytes
    assert est.total_bytes == sum(est.breakdown.values())
    assert est.weights_bytes == (EMBED + L * (ATTN_PER_LAYER + MLP_PER_LAYER) + NORMS) * 2


def test_to_dict_is_json_ready():
    data = json.loads(json.dumps(estimate(TINY, PlanConfig(bits=4)).to_dict()))
    for key in ("params", "weights_bytes", "kv_cache_bytes", "activation_bytes", "total_bytes", "bits_per_weight",
                "breakdown", "notes"):
        assert key in data
    assert data["plan"]["label"] == "W4A16 g128 sym"
    assert set(data["breakdown"]) == {"embeddings", "attention", "mlp", "norms", "lm_head", "other", "kv_cache",
                                      "activations"}


# ---------------------------------------------------------------- fits and formatting

def test_fits_on_verdicts():
    rows = {r["name"].split(" (")[0]: r for r in fits_on(24 * GIB, available_bytes=32 * GIB)}
    assert [rows[n]["fits"] for n in ("16 GiB GPU", "24 GiB GPU", "40 GiB GPU", "48 GiB GPU", "80 GiB GPU")] == \
        [False, True, True, True, True]   # exactly full still fits
    assert rows["16 GiB GPU"]["headroom_bytes"] == -8 * GIB
    assert rows["80 GiB GPU"]["capacity_bytes"] == 80 * 2**30
    assert rows["this machine"]["fits"] and rows["this machine"]["headroom_bytes"] == 8 * GIB


def test_fits_on_reads_free_ram(monkeypatch):
    monkeypatch.setattr(planner.psutil, "virtual_memory", lambda: SimpleNamespace(available=3 * GIB))
    machine = fits_on(4 * GIB)[-1]
    assert machine["name"] == "this machine (free RAM)" and machine["capacity_bytes"] == 3 * GIB
    assert not machine["fits"]


def test_format_gib():
    assert format_gib(2**30) == "1.00 GiB"
    assert format_gib(1.234 * 2**30) == "1.23 GiB"
    assert format_gib(4 * 10**9) == "3.73 GiB"   # 4 GB is not 4 GiB


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("kwargs, fragment", [
    ({"bits": 7}, "bits 7"), ({"bits": 4.0}, "bits 4.0"), ({"group_size": 0}, "group size 0"),
    ({"sparsity": 0.99}, "sparsity 0.99"), ({"sparsity_format": "csr"}, "'csr'"), ({"context": 0}, "context 0"),
    ({"batch": 0}, "batch 0"), ({"kv_bits": 2}, "KV-cache bits 2"), ({"base_dtype_bytes": 3}, "base dtype bytes 3"),
    ({"symmetric": "yes"}, "'yes'"),
])
def test_plan_config_refuses_bad_values(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        PlanConfig(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_load_config_from_folder_and_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert load_config(tmp_path).num_key_value_heads == KV
    assert count_parameters(tmp_path / "config.json").total == EMBED + TARGETED + NORMS


@pytest.mark.parametrize("text, error, fragment", [
    ("{not json", DataError, "not valid JSON"),
    ("[1, 2]", DataError, "JSON object"),
    (json.dumps({"hidden_size": 64}), ConfigError, "model_type"),
    (json.dumps({"model_type": "no-such-model"}), ConfigError, "'no-such-model'"),
    (json.dumps({**TINY, "hidden_size": -64}), ConfigError, "hidden_size is -64"),
    (json.dumps({**TINY, "hidden_size": "wide"}), ConfigError, "hidden_size"),
])
def test_bad_config_files_are_refused(tmp_path, text, error, fragment):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(error) as info:
        count_parameters(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_config(tmp_path / "nowhere.json")


@pytest.mark.parametrize("fields, fragment", [
    ({"hidden_size": 10**6, "intermediate_size": 4 * 10**6, "num_attention_heads": 1000, "num_key_value_heads": 1000,
      "num_hidden_layers": 1000}, "1e13"),
    ({"num_hidden_layers": 5000}, "num_hidden_layers 5000"),
])
def test_absurd_sizes_are_refused_before_building(monkeypatch, fields, fragment):
    def must_not_build(config):
        raise AssertionError("the model was built before the sizes were checked")
    monkeypatch.setattr(counting, "build_meta_model", must_not_build)
    with pytest.raises(ConfigError, match=fragment):
        count_parameters({**TINY, **fields})


def test_unknown_preset_names_the_choices():
    with pytest.raises(MemoptError, match="'llama-3-8b'"):
        load_preset("llama-9")
