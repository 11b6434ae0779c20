"""The peak memory of compressing and evaluating a model layer by layer under a cap, from its config.

The layer-by-layer route (``memopt_core.offload``) keeps at most ``max_memory`` bytes of weights
resident and streams the rest one block at a time, so its peak is about:

- resident weights: ``min(cap, all weights)``;
- one streamed block twice: its dense weights read from disk and the compressed copy built from
  them (an upper bound: packed codes are smaller); and the embedding (or head) matrix once when
  the cap is below it, since it is then read from disk for every forward;
- working memory: one evaluation window's activations, the head's output for one slice of
  positions (``SLICE_ELEMENTS`` float32, 8 MiB) and ``SLICE_COPIES`` more slices being scored
  (log-probabilities, the KL's exponentials, their top-k). Architectures whose head the scorer
  cannot apply apart (not in ``PLAIN_HEAD_TYPES``) hold the window's whole float32 logits
  ``[seq_len, vocab]`` instead of that one slice, as their forward returns them. For calibrated
  methods, the calibration batch through one block (hidden states in and out, the block's
  intermediates, the float32 copy of the widest layer input and its ``[in, in]`` Hessian) when larger.

From the planner's exact parameter counts; theoretical like every planner figure (the
interpreter, libraries and tokenizer come on top: the guard's margin is for them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from memopt_core.config.evaluation import PLAIN_HEAD_TYPES, SLICE_ELEMENTS
from memopt_core.planning.counting import count_parameters
from memopt_core.planning.presets import ModelDims, check_sizes, load_config

SLICE_COPIES = 3  # log-probabilities, the KL's exponentials, the top-k: one slice each
FLOAT32 = 4


@dataclass(frozen=True)
class LayerByLayerPeak:
    """Bytes of each part of the peak; ``total_bytes`` is their sum."""

    max_memory: int
    weights_bytes: int
    resident_bytes: int
    block_bytes: int
    embedding_bytes: int
    streamed_bytes: int
    working_bytes: int
    total_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def _working_bytes(dims: ModelDims, logits_whole: bool | None, seq_len: int, calib_tokens: int,
                   dtype_bytes: int) -> int:
    """One evaluation window, or the calibration batch through one block, whichever is larger.
    ``logits_whole``: None for models without logits, True when the window's logits exist whole."""
    per_token = (4 * dims.hidden + 2 * dims.intermediate) * dtype_bytes
    logits = seq_len * dims.vocab  # [S, V] of one window
    piece = min(SLICE_ELEMENTS, logits)  # one slice of positions [rows, V]
    scoring = 0 if logits_whole is None else (SLICE_COPIES * piece + (logits if logits_whole else piece)) * FLOAT32
    evaluation = seq_len * per_token + scoring
    if not calib_tokens:
        return evaluation
    widest = max(dims.hidden, dims.intermediate)
    calibration = calib_tokens * (per_token + 2 * dims.hidden * dtype_bytes + widest * FLOAT32) \
        + widest * widest * FLOAT32
    return max(evaluation, calibration)


def estimate_peak(config, dtype_bytes: int, max_memory: int, seq_len: int = 512,
                  calib_tokens: int = 0) -> LayerByLayerPeak:
    """The layer-by-layer route's peak for ``config`` (config.json path, folder, dict or transformers
    config) in a dtype of ``dtype_bytes``, capped at ``max_memory`` bytes of resident weights;
    ``calib_tokens`` = samples x length of the calibration batch (0: no calibration)."""
    config = load_config(config)
    dims = check_sizes(config)
    counts = count_parameters(config)
    weights = counts.total * dtype_bytes
    block = (counts.attention + counts.mlp) * dtype_bytes // dims.layers
    embedding = max(counts.embeddings, counts.lm_head) * dtype_bytes
    streamed = (2 * block if weights > max_memory else 0) + (embedding if max_memory < embedding else 0)
    logits_whole = None if not counts.is_causal else config.model_type not in PLAIN_HEAD_TYPES
    working = _working_bytes(dims, logits_whole, seq_len, calib_tokens, dtype_bytes)
    resident = min(max_memory, weights)
    return LayerByLayerPeak(max_memory=max_memory, weights_bytes=weights, resident_bytes=resident, block_bytes=block,
                            embedding_bytes=embedding, streamed_bytes=streamed, working_bytes=working,
                            total_bytes=resident + streamed + working)


def suggest_cap(config, dtype_bytes: int, usable_bytes: int, seq_len: int = 512) -> LayerByLayerPeak | None:
    """The largest cap whose estimated peak (no calibration) stays within ``usable_bytes``, and that
    peak; None when even the embeddings, one block and one window's work would not fit (a cap below
    the embeddings saves nothing: they are then read whole for every forward)."""
    floor = estimate_peak(config, dtype_bytes, 1, seq_len)
    cap = usable_bytes - 2 * floor.block_bytes - floor.working_bytes
    return estimate_peak(config, dtype_bytes, cap, seq_len) if cap >= floor.embedding_bytes else None
