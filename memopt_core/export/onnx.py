"""Export to ONNX with ``torch.onnx`` and quantize with ONNX Runtime's own quantizers; run in ORT.

The graph is traced from a dense copy holding memopt's dequantized weights (what memopt evaluated),
so ``fp32`` reproduces the compressed model. ``int8`` is ONNX Runtime's dynamic quantization
(int8 weights per channel, activations quantized at run time) and ``int4`` its MatMulNBits
quantizer (4-bit symmetric blocks of 32): both re-quantize the float graph with ORT's rules, so
they are their own rows, measured on the same windows. Causal LMs take ``input_ids`` and return
``logits`` (no cache); encoders take ``input_ids`` and ``attention_mask`` and return
``last_hidden_state``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from torch import nn

from memopt_core.compression.compress import structural_copy
from memopt_core.compression.layers import dense_linear
from memopt_core.compression.walk import effective_weight, linear_layers, set_module

MODEL_FILE = "model.onnx"
OPSET = 18
INT4_BLOCK = 32


def dense_copy(model: nn.Module) -> nn.Module:
    """A float32 copy of ``model`` whose compressed layers are plain Linears (``model`` unchanged)."""
    copy = structural_copy(model)
    for name, module in linear_layers(copy).items():
        if type(module) is not nn.Linear:
            bias = getattr(module, "bias", None)
            weight = effective_weight(module).detach().float().clone()  # [out, in], memopt's de-quantized weight
            set_module(copy, name, dense_linear(weight, None if bias is None else nn.Parameter(bias.detach().float())))
    return copy.float().eval()


class _CausalLogits(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


class _EncoderStates(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_float(model: nn.Module, kind: str, path: Path) -> None:
    """Trace a dense float32 copy of ``model`` into ``path`` (weights in ``path.data`` beside it)."""
    dense = dense_copy(model)
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=8192)
    ids = torch.ones(2, 16, dtype=torch.long)
    if kind == "causal-lm":
        wrapper, args, names = _CausalLogits(dense), (ids,), (["input_ids"], ["logits"])
        shapes = ({0: batch, 1: seq},)
    else:
        wrapper, args, names = _EncoderStates(dense), (ids, torch.ones_like(ids)), (["input_ids", "attention_mask"],
                                                                                   ["last_hidden_state"])
        shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines would bury the report
        logging.getLogger(name).setLevel(logging.WARNING)
    # The exporter prints its progress on stdout, which must carry only the CLI's JSON.
    with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(wrapper, args, dynamo=True, input_names=names[0], output_names=names[1],
                                    dynamic_shapes=shapes, opset_version=OPSET, verbose=False)
    program.save(str(path), external_data=True)


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights per channel (``target`` plus its data file)."""
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=True)


def quantize_int4(source: Path, target: Path) -> None:
    """ONNX Runtime MatMulNBits: 4-bit symmetric blocks of 32 for every MatMul with a constant weight."""
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), block_size=INT4_BLOCK, is_symmetric=True)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=True)


def session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on ``path``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(torch.get_num_threads(), os.cpu_count() or 1))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtCausalLM(nn.Module):
    """An ONNX Runtime causal-LM session behind the call shape memopt's scoring loop uses:
    ``model(input_ids=[B, S], use_cache=False).logits -> [B, S, V]`` (CPU float32)."""

    def __init__(self, path: Path, config):
        super().__init__()
        self.session, self.config = session(path), config

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        logits = self.session.run(["logits"], {"input_ids": input_ids.cpu().numpy().astype(np.int64)})[0]
        return SimpleNamespace(logits=torch.from_numpy(logits))


class OrtEncoder(nn.Module):
    """An ONNX Runtime encoder session: ``model(input_ids, attention_mask, ...).last_hidden_state``."""

    def __init__(self, path: Path, config):
        super().__init__()
        self.session, self.config = session(path), config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
        feeds = {"input_ids": input_ids.cpu().numpy().astype(np.int64),
                 "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        return SimpleNamespace(last_hidden_state=torch.from_numpy(self.session.run(["last_hidden_state"], feeds)[0]))


def write_onnx(model: nn.Module, tokenizer, kind: str, folder: Path, type_name: str) -> list[str]:
    """Write ``folder``: ``model.onnx`` (+ its external data), config.json and the tokenizer.

    ``type_name``: ``fp32``, ``int8`` or ``int4``. ``model`` is not changed. Returns notes."""
    target = folder / MODEL_FILE
    if type_name == "fp32":
        export_float(model, kind, target)
    else:
        scratch = folder / ".float"
        scratch.mkdir()
        export_float(model, kind, scratch / MODEL_FILE)
        logging.disable(logging.INFO)  # ONNX Runtime's quantizers log every tensor at INFO on the root logger
        try:
            (quantize_int8 if type_name == "int8" else quantize_int4)(scratch / MODEL_FILE, target)
        finally:
            logging.disable(logging.NOTSET)
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    notes = {"int8": ["ONNX Runtime dynamic int8 re-quantizes the exported weights (per channel) and quantizes "
                      "activations at run time: its own row, not memopt's codes"],
             "int4": [f"ONNX Runtime MatMulNBits re-quantizes every MatMul weight (lm_head included) to 4-bit "
                      f"symmetric blocks of {INT4_BLOCK}: its own row, not memopt's codes"]}
    return notes.get(type_name, [])
