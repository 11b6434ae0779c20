"""A batch's next-token logits made a slice of positions at a time, so no window's whole logits exist.

A causal LM's head turns hidden states ``[B, S, d]`` (small: SmolLM2 512 x 576 floats) into logits
``[B, S, V]`` (large: 512 x 49,152 x 4 B = 96 MiB). Where the model's own forward is exactly
``lm_head(base_model(...).last_hidden_state)`` (``PLAIN_HEAD_TYPES`` in ``config/evaluation.py``:
the final norm is the base model's last step and nothing follows the head), :func:`logit_slices`
runs the base model once and the head on ``rows`` positions at a time when the model streams its
weights under a memory cap (the layer-by-layer route), so the largest logits tensor ever made is
``[rows, V]`` (``SLICE_ELEMENTS``, 8 MiB). Each position's logits are the whole forward's to float32
rounding (a product over fewer rows may sum in another order), so the two routes agree to float
tolerance, not bit for bit. A model held whole in memory, and architectures that rescale or cap
what the head returns (Gemma's soft-capping, Cohere's logit scale, Granite's divisor), run their
whole forward, sliced afterwards for scoring, the logits held once.
"""
from __future__ import annotations

from typing import Iterator

from torch import Tensor, nn

from memopt_core.config import evaluation as settings
from memopt_core.config.evaluation import SLICE_ELEMENTS


def vocab_size(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return getattr(head, "out_features", None) or getattr(model.config, "vocab_size", 1)


def slice_rows(model: nn.Module, elements: int = SLICE_ELEMENTS) -> int:
    """Positions scored at a time so that a float32 slice [rows, V] holds about ``elements``."""
    return max(1, elements // vocab_size(model))


def position_slices(tensor: Tensor, rows: int) -> Iterator[Tensor]:
    """Views [<= rows, ...] of ``tensor`` [B, S, ...], in the order of ``tensor.flatten(0, 1)``."""
    for window in tensor:
        for start in range(0, window.shape[0], rows):
            yield window[start:start + rows]


def head_apart(model: nn.Module) -> nn.Module | None:
    """The head of ``model`` when it can be applied apart from the base model (see the module
    docstring) and the model streams its weights under a memory cap (accelerate's ``hf_device_map``),
    else None. A model held whole in memory keeps its one head product per batch: 13 products of
    42 rows read SmolLM2's 113 MB head 13 times and cost 0.35 s a 512-token window (measured, 2 cores)."""
    if not getattr(model, "hf_device_map", None):
        return None
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    causal_lm = type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))  # not a wrapper around one
    if model_type not in settings.PLAIN_HEAD_TYPES or not causal_lm or getattr(model, "base_model", model) is model:
        return None
    return model.get_output_embeddings()


def logit_slices(model: nn.Module, batch: Tensor, rows: int) -> Iterator[Tensor]:
    """The logits predicting tokens 1..S-1 of ``batch`` [B, S] (token ids on the model's device),
    as slices [<= rows, V] in the order of ``logits[:, :-1].flatten(0, 1)``. The model is not changed."""
    head = head_apart(model)
    if head is None:
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # [B, S-1, V], whole
        yield from position_slices(logits, rows)
        return
    hidden = model.base_model(input_ids=batch, use_cache=False).last_hidden_state[:, :-1]  # [B, S-1, d]
    for piece in position_slices(hidden, rows):
        yield head(piece)  # [<= rows, V]
