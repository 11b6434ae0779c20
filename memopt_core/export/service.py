"""One export end to end, shared by the CLI and the Deploy page.

An :class:`ExportSource` is a compressed model memopt evaluated (from a fresh run or a ``run --save``
folder) with its figures and evaluation inputs; :func:`plan_export` says what each layer becomes
without writing anything; :func:`export` writes the files (staged, renamed at the end) and, with
``verify``, measures them through the format's own loader on the same windows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from memopt_core.compression.walk import linear_layers
from memopt_core.errors import ConfigError, UnsupportedModelError
from memopt_core.export import compressed_tensors as ct
from memopt_core.export import gguf as gguf_writer
from memopt_core.export import onnx as onnx_writer
from memopt_core.export import onnx_codes
from memopt_core.export import verify
from memopt_core.export.files import check_destination, listing, staged_folder, tensor_bytes
from memopt_core.export.formats import ONNX_TYPES, FormatType, check_format, format_type
from memopt_core.export.layer_plan import LayerPlan, kept_float_plan, onnx_layer_plan

GGUF_FILE = "model.gguf"


@dataclass(frozen=True)
class ExportRequest:
    """Which format and type (None: the type that holds the setting's codes), the compressed-tensors
    group size when the type is given, and whether to run the round trip."""

    format: str
    type: str | None = None
    group_size: int | None = None
    verify: bool = False

    def __post_init__(self) -> None:
        check_format(self.format)
        if self.type is not None:
            format_type(self.format, self.type)
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size <= 0):
            raise ConfigError(f"group size {self.group_size!r} must be a positive whole number")

    @property
    def format_type(self) -> FormatType | None:
        return None if self.type is None else format_type(self.format, self.type)


@dataclass
class ExportSource:
    """A compressed model memopt evaluated, with what the round trip compares against.

    ``memopt``: the setting's figures (``perplexity`` for causal LMs, ``cosine_similarity`` for
    encoders, ``stored_bytes`` ...); ``windows [n, seq_len]`` / ``sentences``: the evaluation inputs;
    ``original_embeddings``: the uncompressed encoder's, when known."""

    model: nn.Module
    tokenizer: Any
    kind: str
    name: str
    memopt: dict[str, Any]
    windows: torch.Tensor | None = None
    sentences: list[str] | None = None
    original_embeddings: torch.Tensor | None = None
    memopt_embeddings: torch.Tensor | None = None


@dataclass
class ExportPlan:
    type: str
    layers: list[LayerPlan]
    notes: list[str] = field(default_factory=list)


@dataclass
class ExportReport:
    format: str
    type: str
    folder: str
    files: list[dict]
    memopt: dict[str, Any]
    layers: list[LayerPlan]
    tensor_bytes: int = 0
    roundtrip: verify.RoundTrip | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def file_bytes(self) -> int:
        return sum(f["bytes"] for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        exact = sum(1 for layer in self.layers if layer.exact)
        return {"format": self.format, "type": self.type, "folder": self.folder, "files": self.files,
                "file_bytes": self.file_bytes, "tensor_bytes": self.tensor_bytes, "memopt": self.memopt,
                "roundtrip": None if self.roundtrip is None else self.roundtrip.to_dict(),
                "layers_exact": f"{exact} of {len(self.layers)}", "layers": [p.to_dict() for p in self.layers],
                "notes": self.notes}


def plan_export(source: ExportSource, request: ExportRequest) -> ExportPlan:
    """What each layer becomes in the requested format (nothing is written). One-line errors for a
    model or setting the format cannot hold."""
    ftype = request.format_type
    if request.format == "gguf":
        if source.kind != "causal-lm":
            raise UnsupportedModelError(f"GGUF export describes Llama-architecture causal LMs; {source.name} is an "
                                        f"{source.kind}: export it to onnx instead")
        plan = gguf_writer.plan_gguf(source.model, ftype)
        return ExportPlan(request.type or plan.file_type, plan.layers, plan.notes)
    if request.format == "compressed-tensors":
        if source.kind != "causal-lm":
            raise UnsupportedModelError(f"compressed-tensors export here writes causal LMs; {source.name} is an "
                                        f"{source.kind}: export it to onnx instead")
        layers = ct.plan_compressed_tensors(source.model, ftype, request.group_size)
        return ExportPlan(request.type or _most_common(p.target for p in layers), layers)
    onnx_type = ftype or ONNX_TYPES["fp32"]
    layers = [onnx_layer_plan(name, module, onnx_type) for name, module in linear_layers(source.model).items()]
    return ExportPlan(onnx_type.name, layers)


def _most_common(values) -> str:
    values = list(values)
    return max(set(values), key=values.count)


def _write(source: ExportSource, request: ExportRequest, plan: ExportPlan, folder: Path) -> list[str]:
    if request.format == "gguf":
        gplan = gguf_writer.GGUFPlan(plan.layers, plan.notes)
        return gguf_writer.write_gguf(source.model, source.tokenizer, folder / GGUF_FILE, gplan, source.name)
    if request.format == "compressed-tensors":
        return ct.write_compressed_tensors(source.model, source.tokenizer, folder, plan.layers, request.group_size)
    notes, kept_float = onnx_writer.write_onnx(source.model, source.tokenizer, source.kind, folder, plan.type)
    plan.layers = [kept_float_plan(p, kept_float[p.name]) if p.name in kept_float else p for p in plan.layers]
    return notes


def export(source: ExportSource, request: ExportRequest, out: str | Path) -> ExportReport:
    """Write ``source.model`` (not changed) to the new folder ``out`` and, with ``request.verify``,
    run the round trip. Nothing is left at ``out`` when anything fails."""
    final = check_destination(out)
    plan = plan_export(source, request)
    with staged_folder(final) as staging:
        notes = plan.notes + _write(source, request, plan, staging)
    report = ExportReport(request.format, plan.type, str(final), listing(final), source.memopt, plan.layers,
                          tensor_bytes(final, request.format), notes=notes)
    if request.verify:
        report.roundtrip = roundtrip(source, request, final)
    return report


def roundtrip(source: ExportSource, request: ExportRequest, folder: Path) -> verify.RoundTrip:
    """Load the export with its format's own reader and measure it on ``source``'s inputs."""
    if request.format == "gguf":
        errors = verify.gguf_weight_errors(folder / GGUF_FILE, source.model)
        loaded = verify.load_gguf(folder / GGUF_FILE)
        result = verify.RoundTrip("gguf.GGUFReader + gguf.quants.dequantize; transformers from_pretrained(gguf_file=)",
                                  max_abs_weight_error=verify.max_error(errors), layer_errors=errors)
    elif request.format == "compressed-tensors":
        loaded = verify.load_compressed_tensors(folder)
        errors = verify.linear_weight_errors(loaded, source.model)
        result = verify.RoundTrip("transformers from_pretrained + compressed-tensors (pack-quantized, dequantize=True)", max_abs_weight_error=verify.max_error(errors), layer_errors=errors)
    else:
        runner = onnx_writer.OrtCausalLM if source.kind == "causal-lm" else onnx_writer.OrtEncoder
        loaded = runner(folder / onnx_writer.MODEL_FILE, source.model.config)
        result = verify.RoundTrip("onnxruntime InferenceSession (CPUExecutionProvider)")
        if request.format_type is not None and request.format_type.memopt_codes:
            errors = onnx_codes.weight_errors(folder / onnx_writer.MODEL_FILE, source.model)
            result.loader = f"MatMulNBits decoded by ONNX Runtime's own kernel; {result.loader}"
            result.max_abs_weight_error, result.layer_errors = verify.max_error(errors), errors
    _measure(result, loaded, source, request)
    return result


def _measure(result: verify.RoundTrip, loaded: nn.Module, source: ExportSource, request: ExportRequest) -> None:
    """Perplexity (and ORT's tokens per second) or embedding cosines, on the inputs memopt used."""
    if source.kind == "causal-lm":
        result.perplexity, result.tokens_per_second = verify.score_lm(loaded, source.windows)
        result.max_abs_logit_error = verify.logit_error(loaded, source.model, source.windows[:1])
        if request.format == "onnx":
            _, dense_speed = verify.score_lm(onnx_writer.dense_copy(source.model), source.windows)
            source.memopt.setdefault("pytorch_dense_fp32_tokens_per_second", dense_speed)
    elif source.sentences is not None:
        result.cosine_to_original, result.cosine_to_memopt = verify.encoder_cosines(
            loaded, source.tokenizer, source.sentences, source.original_embeddings, source.memopt_embeddings)
