"""GGUF files of tiny Llamas: read back by gguf's reader and by transformers, and refused in one
line (nothing written) when the model or setting cannot be described."""
import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError, MemoptError, UnsupportedModelError
from memopt_core.export.formats import GGUF_TYPES, format_type
from memopt_core.export.service import ExportRequest, export, plan_export
from memopt_core.export.verify import gguf_weight_errors
from support import byte_tokenizer, compressed, source, tiny_llama, windows

Q4_1 = GGUF_TYPES["Q4_1"].quant_config()


@pytest.fixture(scope="module")
def q4_1_model():
    return compressed(tiny_llama(), Q4_1)


def test_q4_1_file_holds_memopts_codes_and_transformers_reads_the_same_model(tmp_path, q4_1_model):
    tokenizer = byte_tokenizer()
    report = export(source(q4_1_model, tokenizer, windows()), ExportRequest("gguf", "Q4_1", verify=True), tmp_path / "out")
    path = tmp_path / "out" / "model.gguf"
    assert [f["path"] for f in report.files] == [str(path)]
    assert all(p.exact and p.how == "copied" for p in report.layers) and len(report.layers) == 14
    assert report.layers[0].name.endswith("q_proj") and report.layers[0].bytes == 64 * 64 // 32 * 20  # 20-byte blocks
    errors = gguf_weight_errors(path, q4_1_model)
    assert set(errors.values()) == {0.0} and len(errors) == 2 * 9 + 2  # 14 linears, 4 norms, token_embd, output_norm
    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_1" and types["token_embd.weight"] == "F32"
    assert "output.weight" not in types  # tied: loaders reuse token_embd
    assert report.roundtrip.max_abs_weight_error == 0.0
    assert report.roundtrip.perplexity == pytest.approx(report.memopt["perplexity"], rel=1e-5)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ids = windows(1, 40, seed=3)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, q4_1_model(ids).logits, atol=1e-5)
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    text = "the theory<|endoftext|> then"
    assert theirs(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_file_metadata_describes_the_llama(tmp_path, q4_1_model):
    export(source(q4_1_model, byte_tokenizer()), ExportRequest("gguf"), tmp_path / "out")
    fields = gguf.GGUFReader(str(tmp_path / "out" / "model.gguf")).fields
    value = {key: fields[key].contents() for key in ("general.architecture", "llama.block_count",
                                                     "llama.attention.head_count_kv", "llama.embedding_length",
                                                     "tokenizer.ggml.model", "tokenizer.ggml.eos_token_id")}
    assert value == {"general.architecture": "llama", "llama.block_count": 2, "llama.attention.head_count_kv": 2,
                     "llama.embedding_length": 64, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.eos_token_id": 258}
    assert fields["tokenizer.ggml.token_type"].contents()[258] == gguf.TokenType.CONTROL
    assert fields["tokenizer.ggml.merges"].contents() == ["Ġ t", "h e"]


@pytest.mark.parametrize("hidden, quant, expected_type, how", [
    (64, QuantConfig(bits=4, granularity="group", group_size=64), "Q4_0", "copied"),  # g64 = two blocks, same scale
    (96, QuantConfig(bits=4, granularity="group", group_size=64), "Q4_0", "copied"),  # 96 = 64 + a last group of 32
    (64, QuantConfig(bits=3, granularity="group", group_size=32), "Q4_0", "widened"),
    (64, QuantConfig(bits=8), "Q8_0", "copied"),  # per-channel: 64 inputs = two blocks per row
    (64, QuantConfig(method="bf16"), "BF16", "dense"),
])
def test_settings_without_their_own_type_are_held_exactly(tmp_path, hidden, quant, expected_type, how):
    model = compressed(tiny_llama(hidden=hidden), quant)
    report = export(source(model, byte_tokenizer()), ExportRequest("gguf"), tmp_path / "out")
    assert {(p.target, p.how, p.exact) for p in report.layers} == {(expected_type, how, True)}
    assert set(gguf_weight_errors(tmp_path / "out" / "model.gguf", model).values()) == {0.0}


def test_groups_that_straddle_blocks_are_requantized_and_said_so(tmp_path):
    model = compressed(tiny_llama(), QuantConfig(bits=4, granularity="group", group_size=16))
    report = export(source(model, byte_tokenizer()), ExportRequest("gguf"), tmp_path / "out")
    assert {(p.how, p.exact) for p in report.layers} == {("re-quantized", False)}
    assert "groups of 16 do not align with blocks of 32" in report.layers[0].note
    errors = gguf_weight_errors(tmp_path / "out" / "model.gguf", model)
    assert 0 < max(errors.values()) < 0.2


def test_integer_zero_point_is_within_fp16_rounding_of_the_minimum(tmp_path):
    model = compressed(tiny_llama(), QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False))
    report = export(source(model, byte_tokenizer()), ExportRequest("gguf"), tmp_path / "out")
    assert {(p.target, p.how) for p in report.layers} == {("Q4_1", "zero rounded")}
    errors = gguf_weight_errors(tmp_path / "out" / "model.gguf", model)
    linear = [v for k, v in errors.items() if k.startswith("blk.") and not k.endswith("norm.weight")]
    assert 0 < max(linear) <= 2 ** -11 * 0.1  # half an fp16 ulp of minimums below 0.1 in magnitude


def test_k_quants_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="blocks of 256") as error:
        format_type("gguf", "Q4_K")
    assert "576" in str(error.value) and "\n" not in str(error.value)


def test_bert_and_odd_widths_and_existing_paths_write_nothing(tmp_path, tiny_bert):
    bert = source(tiny_bert, byte_tokenizer())
    bert.kind = "encoder"
    with pytest.raises(UnsupportedModelError, match="onnx instead"):
        export(bert, ExportRequest("gguf"), tmp_path / "bert")
    odd = compressed(tiny_llama(hidden=48), QuantConfig(bits=8, granularity="group", group_size=16))
    with pytest.raises(ConfigError, match="48 inputs: GGUF blocks of 32 do not divide it"):
        plan_export(source(odd, byte_tokenizer()), ExportRequest("gguf", "Q8_0"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        export(source(odd, byte_tokenizer()), ExportRequest("gguf", "F16"), tmp_path / "taken")
    with pytest.raises(MemoptError):
        export(source(odd, byte_tokenizer()), ExportRequest("gguf", "Q8_0"), tmp_path / "odd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no half-written folder anywhere
