"""ONNX Runtime dynamic 8-bit: the outlier rule against ORT's own DynamicQuantizeLinear, and a MatMul
whose input carries a massive activation kept float in the exported graph."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from memopt_core.export import onnx_int8
from memopt_core.export.onnx import dense_copy
from memopt_core.export.service import ExportRequest, export
from support import byte_tokenizer, compressed, source, tiny_llama, windows


def _ort_zeroed(x: np.ndarray) -> float:
    """Fraction of ``x`` that ONNX Runtime's DynamicQuantizeLinear maps onto its zero point."""
    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "scale", "zero"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, list(x.shape)),
                               helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
                               helper.make_tensor_value_info("zero", TensorProto.UINT8, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    y, _, zero = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return float((y == zero).mean())


@pytest.mark.parametrize("outlier", [0.0, 30.0, 3000.0])
def test_zeroed_fraction_matches_onnx_runtime(outlier):
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(3)) * 0.05
    x[5, 7] = outlier or x[5, 7]  # one massive activation, as SmolLM2's down projections see
    ours = onnx_int8.zeroed_fraction(x)
    assert ours == pytest.approx(_ort_zeroed(x.numpy()), abs=2 / x.numel())  # ties at half a step may differ
    if outlier == 3000.0:
        assert ours > 0.99
    if outlier == 0.0:
        assert ours < 0.05


def _with_massive_activation(model):
    """Block 1's MLP gets one intermediate channel ~10^4 times the rest (its down_proj input)."""
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0] *= 3e4
    return model


@pytest.mark.slow
def test_outlier_input_detected_and_its_matmul_kept_float(tmp_path):
    model = compressed(_with_massive_activation(tiny_llama()), None)
    tokens = windows(2, 64, seed=4)
    outliers = onnx_int8.outlier_inputs(dense_copy(model), tokens, "causal-lm")
    assert list(outliers) == ["model.layers.1.mlp.down_proj"] and outliers["model.layers.1.mlp.down_proj"] > 0.9

    report = export(source(model, byte_tokenizer(), tokens), ExportRequest("onnx", "int8", verify=True), tmp_path / "out")
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["MatMulInteger"] == 13  # 14 block Linears, one kept float
    kept = [layer for layer in report.layers if layer.target == "fp32"]
    assert [layer.name for layer in kept] == ["model.layers.1.mlp.down_proj", "lm_head"] and kept[0].exact
    assert "activation outliers" in kept[0].note and "not a constant" in kept[1].note
    assert any("model.layers.1.mlp.down_proj" in note and "kept float" in note for note in report.notes)
    assert report.roundtrip.perplexity == pytest.approx(report.memopt["perplexity"], rel=0.05)


@pytest.mark.slow
def test_matmul_nodes_name_memopts_linears(tmp_path):
    model = compressed(tiny_llama(), None)
    report = export(source(model, byte_tokenizer()), ExportRequest("onnx", "fp32"), tmp_path / "out")
    nodes = onnx_int8.matmul_nodes(tmp_path / "out" / "model.onnx")
    assert set(nodes) >= {layer.name for layer in report.layers} and "lm_head" in nodes
