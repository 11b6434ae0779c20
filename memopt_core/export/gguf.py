"""Write a (compressed) Llama-architecture model as one GGUF file: metadata, tokenizer, weights.

Tensor names and the row order of ``attn_q``/``attn_k`` follow llama.cpp's converter (it permutes
the rows of each head into the interleaved rotary layout; transformers undoes it on load). The
permutation moves whole rows, so a layer's codes and per-row scales move with them unchanged.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from torch import nn

from memopt_core.compression.walk import effective_weight, linear_layers
from memopt_core.errors import UnsupportedModelError
from memopt_core.export.formats import GGUF_BLOCK, GGUF_TYPES, FormatType
from memopt_core.export.gguf_blocks import block_params, encode_blocks, type_codes
from memopt_core.export.gguf_tokenizer import add_tokenizer
from memopt_core.export.layer_plan import (REQUANTIZED, ZERO_ROUNDED, LayerPlan, auto_gguf_type, grid_of,
                                           gguf_layer_plan, requantized_grid)

_BLOCK_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down"}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


@dataclass
class GGUFPlan:
    """The layers' plans plus what the file will say about the rest."""

    layers: list[LayerPlan]
    notes: list[str] = field(default_factory=list)

    @property
    def file_type(self) -> str:
        quantized = Counter(p.target for p in self.layers if p.target.startswith("Q"))
        return quantized.most_common(1)[0][0] if quantized else "F32"


def check_llama(model: nn.Module) -> None:
    """GGUF metadata here describes the llama architecture only; anything else is a one-line error."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind != "llama" or not hasattr(model, "lm_head"):
        raise UnsupportedModelError(f"GGUF export describes Llama-architecture causal LMs (LlamaForCausalLM); "
                                    f"{type(model).__name__} ({kind}) is not one: export it to onnx instead")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UnsupportedModelError("GGUF export of Llama models with biases in attention or MLP is not supported")
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default":
        raise UnsupportedModelError(f"GGUF export writes default rotary embeddings; this model uses {rope!r} scaling")


def gguf_name(hf_name: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> ``blk.3.ffn_up`` (module names, without ``.weight``)."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in _BLOCK_NAMES:
        raise UnsupportedModelError(f"{hf_name} has no llama tensor name in GGUF")
    return f"blk.{parts[2]}.{_BLOCK_NAMES['.'.join(parts[3:])]}"


def head_row_order(out_features: int, n_head: int) -> torch.Tensor:
    """Row ``i`` of the GGUF tensor is row ``order[i]`` of the transformers one (llama.cpp's permute)."""
    rows = torch.arange(out_features).reshape(n_head, 2, out_features // n_head // 2)
    return rows.transpose(1, 2).reshape(-1)


def _row_order(config, name: str, out_features: int) -> torch.Tensor | None:
    if name.endswith("attn_q"):
        return head_row_order(out_features, config.num_attention_heads)
    if name.endswith("attn_k"):
        return head_row_order(out_features, config.num_key_value_heads)
    return None


def _tied_head(model: nn.Module) -> bool:
    """lm_head shares the embedding matrix (and memopt left it as it was)."""
    return bool(getattr(model.config, "tie_word_embeddings", False)) and type(model.lm_head) is nn.Linear \
        and model.lm_head.weight is model.get_input_embeddings().weight


def plan_gguf(model: nn.Module, requested: FormatType | None) -> GGUFPlan:
    """Each Linear's GGUF type and fate: ``requested`` for the compressed layers, else the narrowest
    type holding their codes. Layers memopt left dense keep their float type."""
    check_llama(model)
    plans = []
    for name, module in linear_layers(model).items():
        if name == "lm_head" and _tied_head(model):
            continue  # written once, as token_embd
        compressed = grid_of(module) is not None or type(module) is not nn.Linear
        ftype = requested if (requested is not None and compressed) else auto_gguf_type(module)
        plans.append(gguf_layer_plan(name, module, ftype))
    return GGUFPlan(plans)


def _quantized_bytes(module: nn.Module, plan: LayerPlan, ftype: FormatType, order) -> np.ndarray:
    """GGUF blocks uint8 ``[out, in // 32 * block bytes]`` of one layer, rows in GGUF order."""
    grid = grid_of(module) if plan.how != REQUANTIZED else requantized_grid(module, ftype.quant_config(GGUF_BLOCK))
    out_f, in_f = grid.shape
    q = type_codes(grid.codes, grid.bits, grid.zero_kind, ftype.name)
    d = block_params(grid.scale, out_f, in_f, grid.group_size if grid.scale.numel() > 1 else in_f)
    m = None
    if grid.zero is not None:
        minimum = grid.zero if plan.how != ZERO_ROUNDED else -(grid.zero.float() * grid.scale.float())
        m = block_params(minimum.half(), out_f, in_f, grid.group_size if grid.scale.numel() > 1 else in_f)
    if order is not None:
        q, d, m = q[order], d[order], None if m is None else m[order]
    return encode_blocks(q, d, m, ftype.name)


def _dense_array(tensor: torch.Tensor, dtype_name: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """A float tensor as numpy in the type's dtype (BF16 travels as raw uint16 words)."""
    if dtype_name == "bfloat16":
        return tensor.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), gguf.GGMLQuantizationType.BF16
    return tensor.detach().to(getattr(torch, dtype_name)).numpy(), None


def _add_metadata(writer: gguf.GGUFWriter, config, name: str, file_type: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(gguf.LlamaFileType[f"MOSTLY_{file_type}"] if file_type != "F32" else gguf.LlamaFileType.ALL_F32))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tensors(writer: gguf.GGUFWriter, model: nn.Module, plan: GGUFPlan) -> None:
    config = model.config
    linears = linear_layers(model)
    by_name = {p.name: p for p in plan.layers}
    for module_name, module in linears.items():
        if module_name == "lm_head" and _tied_head(model):
            continue  # the file then has no output.weight, which tells loaders to tie it to token_embd
        target, layer = gguf_name(module_name), by_name[module_name]
        ftype = GGUF_TYPES[layer.target]
        order = _row_order(config, target, module.out_features)
        if ftype.is_quantized:
            writer.add_tensor(f"{target}.weight", _quantized_bytes(module, layer, ftype, order), raw_dtype=ftype_enum(ftype))
        else:
            weight = effective_weight(module)
            array, raw = _dense_array(weight if order is None else weight[order], ftype.dense_dtype)
            writer.add_tensor(f"{target}.weight", array, raw_dtype=raw)
    for param_name, param in model.named_parameters():
        module_name = param_name.rsplit(".", 1)[0]
        if module_name in linears:
            continue
        dtype = "float32" if param.dim() == 1 or param.dtype == torch.float32 else \
            {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(param.dtype, "float32")
        array, raw = _dense_array(param, dtype)
        writer.add_tensor(f"{gguf_name(module_name)}.weight", array, raw_dtype=raw)


def ftype_enum(ftype: FormatType) -> gguf.GGMLQuantizationType:
    return gguf.GGMLQuantizationType[ftype.name]


def write_gguf(model: nn.Module, tokenizer, path: Path, plan: GGUFPlan, name: str) -> list[str]:
    """Write ``model`` (not changed) as the GGUF file ``path`` following ``plan``. Returns notes."""
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines would bury the report
    writer = gguf.GGUFWriter(str(path), "llama")
    try:
        _add_metadata(writer, model.config, name, plan.file_type)
        notes = add_tokenizer(writer, tokenizer, model.config.vocab_size)
        _add_tensors(writer, model, plan)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return notes
