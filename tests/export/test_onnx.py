"""ONNX exports run in ONNX Runtime: the float graph reproduces memopt's compressed model, and ONNX
Runtime's own int8 / 4-bit quantizers put their operators in the graph."""
import collections

import onnx
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from memopt_core.config import QuantConfig
from memopt_core.evaluation.encoder import sentence_embeddings
from memopt_core.export.onnx import OrtCausalLM
from memopt_core.export.service import ExportRequest, ExportSource, export
from support import byte_tokenizer, compressed, source, tiny_llama, windows


def _ops(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.slow
def test_float_graph_reproduces_memopts_quantized_model(tmp_path):
    model = compressed(tiny_llama(), QuantConfig(bits=4, granularity="group", group_size=32))
    report = export(source(model, byte_tokenizer(), windows()), ExportRequest("onnx", "fp32", verify=True), tmp_path / "out")
    names = sorted(f["path"].rsplit("/", 1)[1] for f in report.files)
    assert {"model.onnx", "model.onnx.data", "config.json", "tokenizer.json"} <= set(names)
    runner = OrtCausalLM(tmp_path / "out" / "model.onnx", model.config)
    ids = windows(3, 48, seed=5)  # another batch size and length than the trace: the axes are dynamic
    with torch.no_grad():
        assert torch.allclose(runner(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)
    assert report.roundtrip.perplexity == pytest.approx(report.memopt["perplexity"], rel=1e-4)
    assert all(p.exact and p.target == "fp32" for p in report.layers)
    assert report.roundtrip.tokens_per_second > 0 and report.memopt["pytorch_dense_fp32_tokens_per_second"] > 0


@pytest.mark.slow
def test_int8_uses_dynamic_quantization_and_stays_close(tmp_path):
    model = compressed(tiny_llama(), None)
    report = export(source(model, byte_tokenizer(), windows()), ExportRequest("onnx", "int8", verify=True), tmp_path / "out")
    assert _ops(tmp_path / "out" / "model.onnx")["MatMulInteger"] >= 14
    assert not (tmp_path / "out" / ".float").exists()
    assert len(report.layers) == 15 and {(p.target, p.how, p.exact) for p in report.layers[:-1]} == {("int8", "re-quantized", False)}
    head = report.layers[-1]  # tied to the embedding: a weight ORT sees computed (transposed), so left float
    assert (head.name, head.target, head.exact) == ("lm_head", "fp32", True) and "not a constant" in head.note
    assert report.roundtrip.perplexity == pytest.approx(report.memopt["perplexity"], rel=0.02)


@pytest.mark.slow
def test_encoder_int4_runs_matmulnbits_with_high_cosine(tmp_path, tiny_bert):
    sentences = ["a fine film", "the plot drags on and on", "an actor at his best", "dull"]
    tokenizer = _bert_tokenizer()
    reference = sentence_embeddings(tiny_bert, tokenizer, sentences)
    src = ExportSource(tiny_bert, tokenizer, "encoder", "tiny-bert", {}, sentences=sentences,
                       original_embeddings=reference, memopt_embeddings=reference)
    report = export(src, ExportRequest("onnx", "int4", verify=True), tmp_path / "out")
    assert _ops(tmp_path / "out" / "model.onnx")["MatMulNBits"] >= 12
    assert 0.9 < report.roundtrip.cosine_to_original < 1.0


def _bert_tokenizer():
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(
        "a fine film the plot drags on and an actor at his best dull".split())}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")
