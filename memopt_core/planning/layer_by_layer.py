"""The peak memory of compressing and evaluating a model layer by layer under a cap, from its config.

The cap (``run --max-memory``) bounds the layer-by-layer route's whole peak for the model, not only
its resident weights. As accelerate keeps room on the main device for the largest layer it reads
from disk, the route reserves, out of the cap, what it holds beside the resident weights, and
keeps resident only the rest (``resident_budget_bytes``, whole blocks in model order):

- one streamed block twice: its dense weights read from disk and the compressed copy built from
  them (an upper bound: packed codes are smaller); and an untied head (``lm_head``), which comes
  last in model order and is therefore read from disk for every forward once any block is;
- working memory: one evaluation window's activations, the head's output for one slice of
  positions (``SLICE_ELEMENTS`` float32, 8 MiB) and ``SLICE_COPIES`` more slices being scored
  (log-probabilities, the KL's exponentials, their top-k). Architectures whose head the scorer
  cannot apply apart (not in ``PLAIN_HEAD_TYPES``) hold the window's whole float32 logits
  ``[seq_len, vocab]`` instead of that one slice, as their forward returns them. For calibrated
  methods, the calibration batch through one block (hidden states in and out, the block's
  intermediates, the float32 copy of the widest layer input and its ``[in, in]`` Hessian) when larger.

So a model that does not fit peaks at about the cap. A model whose weights fit beside one window
streams nothing. The floor is the embeddings plus that reserve: below it the budget cannot hold the
embeddings, which come first in model order, so nothing is resident, the embeddings are read from
disk for every forward too, and the peak is that floor whatever the cap.

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
    """Bytes of each part of the peak under a cap of ``max_memory``; ``total_bytes`` is
    ``resident_bytes + streamed_bytes + working_bytes``. ``resident_budget_bytes``: what the device
    map may keep resident (the cap less the reserve), ``resident_bytes`` what the plan counts of it
    (the whole budget, or every weight when they fit; 0 when the budget cannot hold the embeddings)."""

    max_memory: int
    weights_bytes: int
    resident_budget_bytes: int
    resident_bytes: int
    block_bytes: int
    embedding_bytes: int
    head_bytes: int
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
    config) in a dtype of ``dtype_bytes`` under a cap of ``max_memory`` bytes (see module doc);
    ``calib_tokens`` = samples x length of the calibration batch (0: no calibration)."""
    config = load_config(config)
    dims = check_sizes(config)
    counts = count_parameters(config)
    weights = counts.total * dtype_bytes
    block = (counts.attention + counts.mlp) * dtype_bytes // dims.layers
    embeddings, head = counts.embeddings * dtype_bytes, counts.lm_head * dtype_bytes  # head: 0 when tied
    logits_whole = None if not counts.is_causal else config.model_type not in PLAIN_HEAD_TYPES
    working = _working_bytes(dims, logits_whole, seq_len, calib_tokens, dtype_bytes)
    if weights + working <= max_memory:  # it all fits beside one window: nothing is streamed
        budget, resident, streamed = max_memory - working, weights, 0
    else:
        streamed = 2 * block + head
        budget = max(max_memory - streamed - working, 0)
        resident = budget  # whole blocks up to it: an upper bound
        if budget < embeddings:  # below the floor: the map keeps a prefix in model order, here empty
            resident, streamed = 0, streamed + embeddings
    return LayerByLayerPeak(max_memory=max_memory, weights_bytes=weights, resident_budget_bytes=budget,
                            resident_bytes=resident, block_bytes=block, embedding_bytes=embeddings,
                            head_bytes=head, streamed_bytes=streamed, working_bytes=working,
                            total_bytes=resident + streamed + working)


def suggest_cap(config, dtype_bytes: int, usable_bytes: int, seq_len: int = 512) -> LayerByLayerPeak | None:
    """The largest cap whose estimated peak (no calibration) stays within ``usable_bytes``, and that
    peak: ``usable_bytes`` itself, as the cap bounds the peak; None when that cap is below the floor
    (the embeddings, one block twice, an untied head and one window's work would not fit)."""
    peak = estimate_peak(config, dtype_bytes, usable_bytes, seq_len)
    return peak if peak.total_bytes <= usable_bytes else None
