"""Round trips: read each export back with the format's own reader and measure it like memopt did.

- GGUF: ``GGUFReader`` + ``gguf.quants.dequantize`` tensor by tensor against memopt's weights, then
  transformers ``from_pretrained(folder, gguf_file=...)`` scored on the same windows;
- compressed-tensors: transformers (with the ``compressed-tensors`` package) loads the folder and
  de-quantizes it at load time (``CompressedTensorsConfig(dequantize=True)``);
- ONNX: an ONNX Runtime CPU session scored by the same loop (perplexity, tokens per second), or
  for encoders the cosine of its sentence embeddings to the original's.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf
import torch
from torch import nn
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

from memopt_core.compression.walk import effective_weight, linear_layers
from memopt_core.evaluation.causal_lm import evaluate_causal_lm
from memopt_core.evaluation.encoder import sentence_embeddings
from memopt_core.export.gguf import gguf_name, head_row_order


@dataclass
class RoundTrip:
    """What the format's own loader gave back. ``max_abs_weight_error`` is over every weight tensor
    against the model memopt evaluated (None where the format re-quantizes on its own, ONNX int8/int4)."""

    loader: str
    perplexity: float | None = None
    max_abs_weight_error: float | None = None
    tokens_per_second: float | None = None
    cosine_to_original: float | None = None
    cosine_to_memopt: float | None = None
    max_abs_logit_error: float | None = None
    layer_errors: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights_by_gguf_name(model: nn.Module) -> dict[str, torch.Tensor]:
    """``blk.0.attn_q.weight`` -> the weight memopt computes with, transformers row order."""
    names = {}
    linears = linear_layers(model)
    for name, module in linears.items():
        names[f"{gguf_name(name)}.weight"] = lambda m=module: effective_weight(m)
    for name, param in model.named_parameters():
        module_name = name.rsplit(".", 1)[0]
        if module_name not in linears:
            names[f"{gguf_name(module_name)}.weight"] = lambda p=param: p
    return names


def gguf_weight_errors(path: Path, model: nn.Module) -> dict[str, float]:
    """Max |GGUF dequantized - memopt| per tensor, read with GGUFReader (rows un-permuted for q/k)."""
    reader = gguf.GGUFReader(str(path))
    expected = _weights_by_gguf_name(model)
    config = model.config
    errors = {}
    for tensor in reader.tensors:
        values = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy()).float()
        if ".attn_q." in tensor.name or ".attn_k." in tensor.name:
            heads = config.num_attention_heads if ".attn_q." in tensor.name else config.num_key_value_heads
            unpermuted = torch.empty_like(values)
            unpermuted[head_row_order(values.shape[0], heads)] = values
            values = unpermuted
        reference = expected[tensor.name]().detach().float()
        errors[tensor.name] = float((values.reshape(reference.shape) - reference).abs().max())
    return errors


def load_gguf(path: Path) -> nn.Module:
    # transformers draws a progress bar of its own while de-quantizing: keep stderr for errors.
    with contextlib.redirect_stderr(io.StringIO()):
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def load_compressed_tensors(folder: Path) -> nn.Module:
    """The folder loaded by transformers + compressed-tensors, de-quantized at load time (float32)."""
    # Its progress bars, and a warning that the dequantize option overrides the file's config (intended).
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                    quantization_config=CompressedTensorsConfig(dequantize=True)).eval()


def linear_weight_errors(loaded: nn.Module, model: nn.Module) -> dict[str, float]:
    """Max |loaded - memopt| per Linear weight (same module names)."""
    theirs = linear_layers(loaded)
    return {name: float((theirs[name].weight.detach().float() - effective_weight(module).detach().float()).abs().max())
            for name, module in linear_layers(model).items()}


def score_lm(model: nn.Module, windows: torch.Tensor) -> tuple[float, float]:
    """(perplexity, tokens per second) of ``model`` on ``windows`` by memopt's scoring loop."""
    metrics, _ = evaluate_causal_lm(model, windows, kl_top_k=None)
    return metrics.perplexity, metrics.tokens_per_second


def logit_error(model: nn.Module, reference: nn.Module, window: torch.Tensor) -> float:
    """Max |logits| difference on one window ``[1, S]``."""
    with torch.inference_mode():
        return float((model(input_ids=window, use_cache=False).logits.float()
                      - reference(input_ids=window, use_cache=False).logits.float()).abs().max())


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine of row-normalised embeddings ``[n, H]``."""
    return float((a * b).sum(-1).mean())


def encoder_cosines(model: nn.Module, tokenizer, sentences: list[str], original: torch.Tensor | None,
                    memopt: torch.Tensor) -> tuple[float | None, float]:
    embeddings = sentence_embeddings(model, tokenizer, sentences)
    return (None if original is None else mean_cosine(embeddings, original)), mean_cosine(embeddings, memopt)


def max_error(errors: dict[str, float]) -> float | None:
    return max(errors.values()) if errors else None


def within(value: float | None, reference: float | None, tolerance: float) -> bool | None:
    """Whether ``value`` is within ``tolerance`` (relative) of ``reference``; None if either is missing."""
    if value is None or reference is None or not math.isfinite(reference):
        return None
    return abs(value - reference) <= tolerance * abs(reference)
