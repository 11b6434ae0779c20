"""Export to ONNX with ``torch.onnx`` and quantize with ONNX Runtime's own quantizers; run in ORT.

The graph is traced from a dense copy holding memopt's dequantized weights (what memopt evaluated),
so ``fp32`` reproduces the compressed model. ``int8`` is ONNX Runtime's dynamic quantization
(uint8 weights per channel, activations quantized at run time, MatMuls whose inputs carry outliers
kept float: see ``onnx_int8``) and ``int4`` its MatMulNBits quantizer (4-bit symmetric blocks of
32): both re-quantize the float graph with ORT's rules, so they are their own rows, measured on the
same windows. ``int4-codes`` / ``int8-codes`` instead put memopt's own codes and scales into
MatMulNBits nodes (see ``onnx_codes``): what ONNX Runtime runs is what memopt evaluated. Causal LMs take ``input_ids`` and return
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
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from torch import nn

from memopt_core.compression.compress import structural_copy
from memopt_core.compression.layers import dense_linear
from memopt_core.compression.walk import effective_weight, linear_layers, set_module
from memopt_core.export import onnx_codes, onnx_int8
from memopt_core.export.formats import ONNX_TYPES

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


def export_float(dense: nn.Module, kind: str, path: Path) -> None:
    """Trace ``dense`` (a :func:`dense_copy`) into ``path`` (weights in ``path.data`` beside it)."""
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=8192)
    ids = torch.ones(2, 16, dtype=torch.long)
    if kind == "causal-lm":
        wrapper, args, names = _CausalLogits(dense), (ids,), (["input_ids"], ["logits"])
        shapes = ({0: batch, 1: seq},)
    else:
        wrapper, args, names = _EncoderStates(dense), (ids, torch.ones_like(ids)), (["input_ids", "attention_mask"],
                                                                                   ["last_hidden_state"])
        shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    wrapper.eval()
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines would bury the report
        logging.getLogger(name).setLevel(logging.WARNING)
    # The exporter prints its progress on stdout, which must carry only the CLI's JSON.
    with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(wrapper, args, dynamo=True, input_names=names[0], output_names=names[1],
                                    dynamic_shapes=shapes, opset_version=OPSET, verbose=False)
    program.save(str(path), external_data=True)


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


def write_onnx(model: nn.Module, tokenizer, kind: str, folder: Path,
               type_name: str) -> tuple[list[str], dict[str, float | None]]:
    """Write ``folder``: ``model.onnx`` (+ its external data), config.json and the tokenizer.

    ``type_name``: ``fp32``, ``int8``, ``int4``, ``int4-codes`` or ``int8-codes``. ``model`` is not changed. Returns notes, and for
    int8 the Linears left float (name -> share of their input a uint8 step would zero, None when
    ONNX Runtime itself left the MatMul float)."""
    target, dense = folder / MODEL_FILE, dense_copy(model)
    notes, kept_float = [], {}
    ftype = ONNX_TYPES[type_name]
    codes = onnx_codes.layer_weights(model, ftype.bits) if ftype.memopt_codes else None  # refuse before writing
    if type_name == "fp32":
        export_float(dense, kind, target)
    else:
        scratch = folder / ".float"
        scratch.mkdir()
        export_float(dense, kind, scratch / MODEL_FILE)
        if codes is not None:
            onnx_codes.replace_matmuls(scratch / MODEL_FILE, target, codes)
            notes = [f"memopt's own codes and scales in {len(codes)} MatMulNBits nodes ({ftype.bits}-bit slots, "
                     "memopt's fp16 scales stored as they are, cast to float32 in the graph): ONNX Runtime decodes "
                     "exactly the weights memopt evaluated"]
        elif type_name == "int8":
            notes, kept_float = _int8(dense, tokenizer, kind, scratch / MODEL_FILE, target)
        else:
            logging.disable(logging.WARNING)  # ONNX Runtime's quantizers log every tensor on the root logger
            try:
                quantize_int4(scratch / MODEL_FILE, target)
            finally:
                logging.disable(logging.NOTSET)
            notes = [f"ONNX Runtime MatMulNBits re-quantizes every MatMul weight (lm_head included) to 4-bit "
                     f"symmetric blocks of {INT4_BLOCK}: its own row, not memopt's codes"]
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return notes, kept_float


def _int8(dense: nn.Module, tokenizer, kind: str, source: Path, target: Path) -> tuple[list[str], dict[str, float | None]]:
    """Dynamic 8-bit with the outlier MatMuls kept float. Returns notes and the Linears left float in
    ``target`` (name -> share of the input a uint8 step would zero; None: ONNX Runtime left it)."""
    outliers = onnx_int8.outlier_inputs(dense, onnx_int8.probe_tokens(tokenizer), kind)
    nodes = onnx_int8.matmul_nodes(source)
    onnx_int8.quantize_int8(source, target, [nodes[name] for name in outliers if name in nodes])
    still_float, linears = onnx_int8.float_matmuls(target), set(linear_layers(dense))
    kept = {name: outliers.get(name) for name, node in nodes.items() if name in linears and node in still_float}
    notes = ["ONNX Runtime dynamic 8-bit quantization re-quantizes the exported weights (uint8 per channel: its "
             "default int8 weights saturate int16 sums on CPUs without VNNI) and quantizes activations at run time "
             "with one scale per tensor: its own row, not memopt's codes"]
    if outliers:
        listed = ", ".join(f"{name} ({share:.0%})" for name, share in sorted(outliers.items(), key=lambda kv: -kv[1]))
        notes.append(f"{len(outliers)} MatMuls kept float: a per-tensor uint8 step would round more than "
                     f"{onnx_int8.MAX_ZEROED:.0%} of their inputs to zero on calibration tokens (activation "
                     f"outliers): {listed}")
    untouched = [name for name, share in kept.items() if share is None]
    if untouched:
        notes.append(f"{', '.join(untouched)} stay float: ONNX Runtime quantizes MatMuls whose weight is a constant "
                     "of the graph, and these multiply by a weight computed in the graph (lm_head tied to the "
                     "embedding is transposed at run time)")
    return notes, kept
