"""ONNX Runtime dynamic int8, with the two options that keep a real language model sane.

``quantize_dynamic`` turns every MatMul with a constant weight into ``DynamicQuantizeLinear`` (the
activation as uint8 with ONE scale for the whole tensor, computed at run time) + ``MatMulInteger``
(int8 weights, a scale per output channel). With its defaults SmolLM2-135M scores a perplexity of
about 9.7 million instead of 13.7, for two reasons, each fixed by an option of the quantizer:

- **u8s8 saturation.** With int8 weights (its default), on x86 CPUs without VNNI (AVX2; AVX-512
  without VNNI) ONNX Runtime adds pairs of uint8 x int8 products in int16 (``vpmaddubsw``), which
  saturates at 32,767 as soon as two products near 255 x 127 meet. uint8 weights (U8U8, an
  integer zero point per channel) take a kernel that does not saturate; ``reduce_range`` (7-bit
  int8 weights) avoids it too but measured worse on SmolLM2 (18.99 vs 17.58 on 1,024 tokens, float
  10.74, every MatMul quantized).
- **Activation outliers.** One scale per tensor cannot serve an input whose few "massive
  activations" are thousands of times its typical value: SmolLM2's ``down_proj`` of block 11 sees
  an absolute maximum of about 3,157 against a median of 0.06, so one uint8 step (12.4) rounds every
  ordinary value to zero. Those MatMuls stay float (``nodes_to_exclude``): the ones whose input, on
  calibration tokens (never the evaluated ones), would have more than ``MAX_ZEROED`` of its values
  rounded to zero.
"""
from __future__ import annotations

import ast
import logging
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from memopt_core.compression.calibration_data import calibration_set
from memopt_core.config import CalibConfig

# More than this fraction of a MatMul's input values rounded to zero by a per-tensor uint8 step:
# the MatMul stays float. SmolLM2's worst down projections lose 87% to 100% of their inputs.
MAX_ZEROED = 0.5
# Calibration tokens that measure the activation ranges: 4 windows of 256 from both bundled texts.
PROBE = CalibConfig(samples=4, seq_len=256)
# torch.onnx (dynamo) records on each node the module scopes it came from; the export wraps the
# model in a module whose attribute is ``model``, so scopes read ``model.<memopt's module name>``.
_SCOPES = "pkg.torch.onnx.name_scopes"
_WRAPPER = "model."


def zeroed_fraction(x: torch.Tensor) -> float:
    """Fraction of ``x``'s values that ``DynamicQuantizeLinear`` rounds to zero: its uint8 step is
    ``(max(x, 0) - min(x, 0)) / 255`` over the whole tensor, the zero point an integer."""
    step = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 255
    if step == 0:
        return 0.0
    return float((x.abs() < step / 2).float().mean())


def outlier_inputs(model: nn.Module, tokens: torch.Tensor, kind: str) -> dict[str, float]:
    """Linear name -> fraction of its input zeroed by per-tensor uint8 quantization, for the Linears
    above ``MAX_ZEROED``, measured on ``tokens [N, S]`` one window at a time (``model`` unchanged)."""
    worst: dict[str, float] = {}

    def hook(name: str):
        def record(_module, inputs, _output):
            worst[name] = max(worst.get(name, 0.0), zeroed_fraction(inputs[0].detach().float()))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if type(m) is nn.Linear]
    try:
        with torch.no_grad():
            for window in tokens:  # one window at a time, like the runtime sees one sequence
                ids = window[None]
                extra = {"attention_mask": torch.ones_like(ids)} if kind != "causal-lm" else {"use_cache": False}
                model(input_ids=ids, **extra)
    finally:
        for handle in handles:
            handle.remove()
    return {name: value for name, value in worst.items() if value > MAX_ZEROED}


def probe_tokens(tokenizer) -> torch.Tensor:
    """``[4, 256]`` calibration windows from both bundled texts (after the evaluated prefix)."""
    return calibration_set(tokenizer, PROBE).tokens


def matmul_nodes(graph_path: Path) -> dict[str, str]:
    """memopt Linear name -> name of the ONNX MatMul node traced from it (float graph at ``graph_path``)."""
    nodes = {}
    for node in onnx.load(str(graph_path), load_external_data=False).graph.node:
        scopes = next((ast.literal_eval(p.value) for p in node.metadata_props if p.key == _SCOPES), None)
        if node.op_type in ("MatMul", "Gemm") and scopes and len(scopes) >= 2 and scopes[-2].startswith(_WRAPPER):
            nodes[scopes[-2][len(_WRAPPER):]] = node.name
    return nodes


def float_matmuls(graph_path: Path) -> set[str]:
    """Names of the MatMul/Gemm nodes still float in the graph at ``graph_path`` (quantized ones are
    replaced by MatMulInteger nodes of other names)."""
    graph = onnx.load(str(graph_path), load_external_data=False).graph
    return {node.name for node in graph.node if node.op_type in ("MatMul", "Gemm")}


def quantize_int8(source: Path, target: Path, keep_float: list[str]) -> None:
    """Dynamic 8-bit quantization of the float graph ``source`` into ``target`` (+ its data file):
    uint8 weights per channel, every MatMul with a constant weight (and the embedding Gather)
    except the nodes named in ``keep_float``."""
    # The quantizer logs every tensor at INFO, and advice to pre-process at WARNING, on the root logger.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8, per_channel=True,
                         nodes_to_exclude=keep_float, use_external_data_format=True)
    finally:
        logging.disable(logging.NOTSET)
