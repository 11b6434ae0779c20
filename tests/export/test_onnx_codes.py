"""memopt's own codes in ONNX Runtime MatMulNBits: bytes against hand-worked blocks, ORT's own kernel
decodes memopt's weights bit for bit, the exported model's logits are memopt's, refusals write nothing."""
import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from memopt_core.config import QuantConfig
from memopt_core.errors import ConfigError
from memopt_core.export.formats import ONNX_TYPES, setting_for_type
from memopt_core.compression.layers import QuantLinear
from memopt_core.compression.walk import linear_layers
from memopt_core.export.matmul_nbits import (decode, file_bits_per_weight, graph_parts, nbits_weight, ort_dequantized,
                                             per_block)
from memopt_core.export.onnx import OrtCausalLM
from memopt_core.export.service import ExportRequest, export
from memopt_core.primitives.quant import QuantizedWeight, dequantize, quantize_weight
from support import byte_tokenizer, compressed, source, tiny_llama, windows


def _grid(codes, scale, zero=None, bits=4, group=32, kind="symmetric") -> QuantizedWeight:
    codes = torch.tensor(codes, dtype=torch.uint8)
    return QuantizedWeight(codes, torch.tensor(scale, dtype=torch.float16),
                           None if zero is None else torch.tensor(zero, dtype=torch.float16), bits, group, kind,
                           tuple(codes.shape))


def test_symmetric_4bit_block_bytes_by_hand():
    codes = [list(range(16)) * 2, [15 - c for c in range(16)] * 2]  # [N=2, K=32]: one block of 32 a row
    weight = nbits_weight(_grid(codes, [[0.5], [0.25]]), 4)
    assert (weight.K, weight.N, weight.bits, weight.block_size) == (32, 2, 4, 32)
    # byte j of a block = code[2j] | code[2j+1] << 4: (0,1) -> 0x10, (2,3) -> 0x32 ...; row 1: (15,14) -> 0xEF
    assert weight.packed.shape == (2, 1, 16)
    assert list(weight.packed[0, 0, :8]) == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert list(weight.packed[1, 0, :2]) == [0xEF, 0xCD]
    assert weight.scales.dtype == np.float16 and weight.scales.tolist() == [[0.5], [0.25]]  # memopt's own
    assert not weight.widened  # one scale a block: the graph only casts it to float32
    assert weight.zero_points is None  # the operator's default 8 is memopt's symmetric offset


def test_integer_zero_points_packed_low_nibble_first_and_scales_kept_per_group():
    # K=64 in groups of 32 -> 2 blocks a row; zeros 3, 12 (row 0) and 7, 0 (row 1)
    codes = [[5] * 64, [9] * 64]
    weight = nbits_weight(_grid(codes, [[1.0, 2.0], [3.0, 4.0]], [[3, 12], [7, 0]], kind="int"), 4)
    assert weight.zero_points.tolist() == [[3 | 12 << 4], [7]]
    assert weight.scales.dtype == np.float16 and weight.scales.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert decode(weight)[0, :32].tolist() == [2.0] * 32 and decode(weight)[0, 32:].tolist() == [-14.0] * 32
    # per-channel 8-bit on K=96: blocks of 32 (the largest power of two dividing 96); the file keeps the
    # row's one fp16 scale and one uint8 zero point, the graph repeats them over the 3 blocks
    wide = nbits_weight(_grid([[130] * 96], [[0.125]], [[128]], bits=8, group=96, kind="int"), 8)
    assert wide.block_size == 32 and wide.packed.shape == (1, 3, 32) and set(wide.packed.ravel().tolist()) == {130}
    assert wide.scales.dtype == np.float16 and wide.scales.shape == (1, 1) and wide.zero_points.tolist() == [[128]]
    assert wide.widened and wide.group_of_block.tolist() == [0, 0, 0]
    assert decode(wide).tolist() == [[0.25] * 96]


def test_narrower_symmetric_codes_sit_in_wider_slots():
    # 2-bit symmetric code c decodes (c - 2) * s; in a 4-bit slot with default zero point 8 it is c + 6
    weight = nbits_weight(_grid([[0, 1, 2, 3] * 8], [[1.0]], bits=2), 4)
    assert list(weight.packed[0, 0, :2]) == [6 | 7 << 4, 8 | 9 << 4]
    assert decode(weight)[0, :4].tolist() == [-2.0, -1.0, 0.0, 1.0]


@pytest.mark.parametrize("in_features, cfg, slot", [
    (64, QuantConfig(bits=4, granularity="group", group_size=32), 4),
    (100, QuantConfig(bits=4, granularity="group", group_size=32), 4),  # a shorter last group: a padded block
    (96, QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False), 4),
    (576, QuantConfig(bits=8), 8),  # per channel on SmolLM2's width: blocks of 64, the row's scale repeated
    (576, QuantConfig(bits=8, granularity="group", group_size=64, symmetric=False), 8),
    (64, QuantConfig(bits=3, granularity="group", group_size=16), 4),
    (64, QuantConfig(bits=4, granularity="per-tensor"), 8),
    (576, QuantConfig(bits=4, symmetric=False), 4),  # per channel: 4-bit zero points packed per block
    (100, QuantConfig(bits=4, granularity="group", group_size=96, symmetric=False), 4),  # blocks 0-2 | 3
    (64, QuantConfig(bits=8, granularity="per-tensor", symmetric=False), 8),
])
def test_ort_kernel_decodes_memopts_weight_exactly(in_features, cfg, slot):
    torch.manual_seed(0)
    grid = quantize_weight(torch.randn(24, in_features), cfg)
    weight = nbits_weight(grid, slot)
    memopt = dequantize(grid).numpy()  # [N, K]
    assert np.array_equal(ort_dequantized(weight).T, memopt)  # ONNX Runtime's own MatMulNBits kernel
    assert np.array_equal(decode(weight), memopt)
    assert file_bits_per_weight(grid, slot) == 8 * weight.nbytes / grid.codes.numel()  # the plan's bpw: bytes written


@pytest.mark.parametrize("cfg, words", [
    (QuantConfig(bits=4, granularity="group", group_size=32, symmetric=False, zero_point="float"), "float minimum"),
    (QuantConfig(bits=4, granularity="group", group_size=24), "groups of 24"),
    (QuantConfig(bits=8, granularity="group", group_size=32), "at most 4 bits"),
])
def test_settings_matmulnbits_cannot_hold_are_refused_in_one_line(cfg, words):
    with pytest.raises(ConfigError, match=words) as error:
        setting_for_type(ONNX_TYPES["int4-codes"], cfg, {})
    assert "\n" not in str(error.value)


def test_type_alone_means_symmetric_g32_and_keeps_a_given_setting():
    assert setting_for_type(ONNX_TYPES["int4-codes"], None, {}).label == "W4A16 g32 sym"
    given = QuantConfig(bits=8, symmetric=False)
    assert setting_for_type(ONNX_TYPES["int8-codes"], given, {"bits": 8, "asymmetric": True}) is given


def test_onnx_runtime_folds_the_scale_nodes_into_the_float32_inputs(tmp_path):
    """The file holds fp16 scales and uint8 zero points per row; ONNX Runtime's basic optimizations fold
    Cast/Gather/Expand into float32 [N, k_blocks] initializers, so the kernel gets what it would from
    written-out float32 scales (and pre-packs them with B)."""
    torch.manual_seed(0)
    weight = nbits_weight(quantize_weight(torch.randn(24, 96), QuantConfig(bits=8, symmetric=False)), 8)
    inits, nodes = graph_parts(weight, "A", "layer", "Y")
    assert [n.op_type for n in nodes] == ["Cast", "Gather", "Gather", "MatMulNBits"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(_model(inits, nodes, (2, 96), 24).SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    assert [n.op_type for n in optimized.node] == ["MatMulNBits"]
    folded = {t.name: onnx.numpy_helper.to_array(t) for t in optimized.initializer}
    scales, zeros = (folded[name] for name in optimized.node[0].input[2:])
    assert scales.dtype == np.float32 and scales.shape == (24, 3) and zeros.dtype == np.uint8 and zeros.shape == (24, 3)
    assert np.array_equal(scales, np.repeat(weight.scales.astype(np.float32), 3, axis=1))
    assert np.array_equal(zeros, np.repeat(weight.zero_points, 3, axis=1))


@pytest.mark.parametrize("cfg, slot", [
    (QuantConfig(bits=4, granularity="group", group_size=32), 4),
    (QuantConfig(bits=4), 4),  # per channel: the row's scale gathered over 9 blocks
    (QuantConfig(bits=4, granularity="group", group_size=96, symmetric=False), 4),
    (QuantConfig(bits=8, symmetric=False), 8),  # scale and uint8 zero point gathered
    (QuantConfig(bits=8, granularity="per-tensor"), 8),  # one scale expanded over every row and block
])
def test_widened_scales_compute_what_written_out_fp32_scales_compute(cfg, slot):
    """Bit for bit the same Y as the former layout (fp32 scales [N, k_blocks] written in the file):
    the folded graph reaches the same kernel with the same inputs."""
    torch.manual_seed(0)
    weight = nbits_weight(quantize_weight(torch.randn(40, 576), cfg), slot)
    a = torch.randn(3, 576).numpy()
    inits, nodes = graph_parts(weight, "A", "layer", "Y")
    written = [inits[0], onnx.numpy_helper.from_array(per_block(weight.scales.astype(np.float32), weight), "S")]
    if weight.zero_points is not None:
        zeros = per_block(weight.zero_points, weight) if weight.zeros_per_group else weight.zero_points
        written.append(onnx.numpy_helper.from_array(zeros, "Z"))
    reference = onnx.helper.make_node("MatMulNBits", ["A", "layer.qweight", "S", "Z"][:len(written) + 1], ["Y"],
                                      domain="com.microsoft", K=576, N=40, bits=slot, block_size=weight.block_size)
    assert np.array_equal(_run(inits, nodes, a, 40), _run(written, [reference], a, 40))


def _model(inits: list, nodes: list, a_shape: tuple[int, int], n: int) -> onnx.ModelProto:
    """``nodes`` as a model ``Y [M, n] = f(A [M, K])``."""
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(nodes, "g", [value("A", onnx.TensorProto.FLOAT, a_shape)],
                                   [value("Y", onnx.TensorProto.FLOAT, [a_shape[0], n])], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18),
                                                        onnx.helper.make_opsetid("com.microsoft", 1)])


def _run(inits: list, nodes: list, a: np.ndarray, n: int) -> np.ndarray:
    model = _model(inits, nodes, a.shape, n)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["Y"], {"A": a})[0]


@pytest.mark.slow
def test_file_holds_memopts_fp16_scales_and_codes_plus_a_small_graph(tmp_path):
    model = compressed(tiny_llama(), QuantConfig(bits=4, granularity="group", group_size=32))
    export(source(model, byte_tokenizer()), ExportRequest("onnx", "int4-codes"), tmp_path / "out")
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    stored = {t.name: t for t in graph.initializer}
    quantized = {name: m for name, m in linear_layers(model).items() if isinstance(m, QuantLinear)}
    for name, module in quantized.items():  # the scales as memopt holds them: fp16 [out, groups], same bits
        scale = stored[f"{name}.scales"]
        assert scale.data_type == onnx.TensorProto.FLOAT16 and tuple(scale.dims) == tuple(module.scale.shape)
        assert np.array_equal(onnx.numpy_helper.to_array(scale).view(np.uint16), module.scale.numpy().view(np.uint16))
    nbits = {n.name: n for n in graph.node if n.op_type == "MatMulNBits"}
    assert set(nbits) == set(quantized) and not any(n.metadata_props for n in graph.node)
    # every input of a MatMulNBits path (rows of 64 / 128 in groups of 32: no padding, nothing widened)
    # is memopt's packed codes or its fp16 scales, byte for byte in number
    path_bytes = sum(len(stored[i].raw_data) for name in nbits for i in (f"{name}.qweight", f"{name}.scales"))
    assert path_bytes == sum(m.packed.numel() + m.scale.numel() * 2 for m in quantized.values())
    # The rest is the float tensors the graph keeps (the tied embedding, norms, rotary frequencies) and
    # the graph itself: names, nodes, shapes, under 200 bytes a node once torch.onnx's stack traces are gone.
    initializer_bytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in graph.initializer)
    files = sum(p.stat().st_size for p in (tmp_path / "out").glob("model.onnx*"))
    assert 0 < files - initializer_bytes < 200 * len(graph.node)


def test_refused_export_writes_nothing(tmp_path):
    model = compressed(tiny_llama(hidden=32), QuantConfig(bits=4, granularity="group", group_size=32,
                                                          symmetric=False, zero_point="float"))
    with pytest.raises(ConfigError, match="float minimum") as error:
        export(source(model, byte_tokenizer()), ExportRequest("onnx", "int4-codes"), tmp_path / "out")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("type_name, cfg, hidden", [
    ("int4-codes", QuantConfig(bits=4, granularity="group", group_size=32), 64),
    # per channel with integer zero points on rows of 96 / 192: blocks of 32 / 64, three a row, so the
    # graph widens each row's fp16 scale and uint8 zero point (Gather)
    ("int8-codes", QuantConfig(bits=8, symmetric=False), 96),
])
def test_onnx_runtime_runs_memopts_codes(tmp_path, type_name, cfg, hidden):
    model = compressed(tiny_llama(hidden=hidden), cfg)
    report = export(source(model, byte_tokenizer(), windows()), ExportRequest("onnx", type_name, verify=True),
                    tmp_path / "out")
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx"),
                                                            load_external_data=False).graph.node)
    assert ops["MatMulNBits"] == 14 and ops["MatMul"] >= 1  # 14 block Linears; lm_head (left float) stays MatMul
    assert report.roundtrip.max_abs_weight_error == 0.0 and len(report.roundtrip.layer_errors) == 14
    assert all(p.exact for p in report.layers) and report.layers[-1].target == "fp32"
    runner = OrtCausalLM(tmp_path / "out" / "model.onnx", model.config)
    ids = windows(3, 48, seed=5)
    with torch.no_grad():
        assert torch.allclose(runner(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert report.roundtrip.perplexity == pytest.approx(report.memopt["perplexity"], rel=1e-5)
