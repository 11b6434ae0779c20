"""What calibration reads: token windows, the inputs of the first transformer block, and each
target layer's input statistics. ``calibrate.py`` drives the block-by-block walk over them.

Tokens, never the evaluated ones. Evaluation reads the first ``EvalConfig.max_tokens`` tokens of its text (``datasets.token_windows``),
so calibration windows start after a protected prefix:

- bundled texts (``wikipedia``, ``news``): after ``max(eval max_tokens, 16,384)`` tokens (+ a
  margin), whichever text is being evaluated, because a dashboard may evaluate the same
  compressed model on the other bundled text (16,384 is DESIGN.md's reference protocol);
- a user file: after the evaluation prefix when it is the evaluation text, else anywhere.

``samples`` windows of ``seq_len`` tokens start at random positions (seeded; they may overlap,
as in the GPTQ reference) in a pool of tokens following the protected prefix. ``both`` draws half
the windows (rounded up) from Wikipedia, the rest from the news text.

Block inputs: a pre-hook on block 0 keeps the hidden states and the other arguments the model
passes (Llama's rotary ``position_embeddings`` and mask; BERT's mask), then stops the forward
(the GPTQ reference's trick). Statistics: ``X^T X`` or ``sum x^2`` per input column, float32.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from memopt_core.config import BUNDLED_TEXTS, CalibConfig, EvalConfig
from memopt_core.errors import ConfigError, DataError
from memopt_core.texts import load_text, token_windows

PROTECTED_TOKENS = 16_384
# Tokens after the protected prefix that are also skipped: a prefix cut can only change the
# tokens right at its end (see datasets.token_windows), so the boundary is never shared.
BOUNDARY_MARGIN = 64
# Draw from a pool this many times the tokens needed (at least MIN_POOL_TOKENS), not the whole text:
# tokenizing the 4.9 MB Wikipedia text takes far longer than the windows need.
POOL_FACTOR = 4
MIN_POOL_TOKENS = 65_536


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """``tokens``: LongTensor ``[samples, seq_len]``; ``description``: what to record with every result."""

    tokens: torch.Tensor
    description: dict[str, Any]


def _split(calib: CalibConfig) -> list[tuple[str, int]]:
    """(text name or path, windows drawn from it)."""
    if calib.text == "both":
        first = (calib.samples + 1) // 2
        return [(name, count) for name, count in (("wikipedia", first), ("news", calib.samples - first)) if count]
    return [(calib.text, calib.samples)]


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:
        return False


def protected_prefix(text: str, eval_config: EvalConfig | None) -> int:
    """Tokens at the start of ``text`` that calibration must not use."""
    max_tokens = eval_config.max_tokens if eval_config is not None else 0
    if text in BUNDLED_TEXTS:
        return max(PROTECTED_TOKENS, max_tokens) + BOUNDARY_MARGIN
    if eval_config is not None and not eval_config.text_is_bundled and _same_file(text, eval_config.text):
        return max_tokens + BOUNDARY_MARGIN
    return 0


def _draw(tokenizer, text_name: str, count: int, seq_len: int, skip: int,
          generator: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
    """``count`` windows ``[count, seq_len]`` from the tokens of ``text_name`` after ``skip``."""
    source = load_text(text_name)
    pool = max(POOL_FACTOR * count * seq_len, MIN_POOL_TOKENS)
    try:
        ids = token_windows(tokenizer, source.text, seq_len, skip + pool).reshape(-1)  # [<= skip + pool]
    except DataError:
        ids = torch.empty(0, dtype=torch.long)
    if ids.numel() - skip < seq_len:
        raise DataError(f"calibration text {source.name!r} has {max(0, ids.numel() - skip):,} tokens after the "
                        f"{skip:,} kept for evaluation; at least {seq_len} are needed for one window")
    starts = torch.randint(skip, ids.numel() - seq_len + 1, (count,), generator=generator)  # [count]
    windows = torch.stack([ids[s:s + seq_len] for s in starts.tolist()])  # [count, seq_len]
    return windows, {"name": source.name, "sha256": source.sha256, "samples": count, "first_token": skip,
                     "pool_tokens": int(ids.numel() - skip)}


def calibration_set(tokenizer, calib: CalibConfig, eval_config: EvalConfig | None = None) -> CalibrationSet:
    """Draw ``calib.samples`` windows of ``calib.seq_len`` tokens with ``calib.seed`` (see module doc).

    Raises DataError when a text is missing or too short after its protected prefix."""
    generator = torch.Generator().manual_seed(calib.seed)
    parts, texts = [], []
    for name, count in _split(calib):
        skip = protected_prefix(name, eval_config)
        windows, info = _draw(tokenizer, name, count, calib.seq_len, skip, generator)
        parts.append(windows)
        texts.append(info)
    tokens = torch.cat(parts)  # [samples, seq_len]
    description = {"text": calib.text, "texts": texts, "samples": calib.samples, "seq_len": calib.seq_len,
                   "seed": calib.seed, "tokens": int(tokens.numel()),
                   "rule": "random windows after the tokens kept for evaluation"}
    return CalibrationSet(tokens=tokens, description=description)


class _Stop(Exception):
    """Raised by the capture hook once block 0's inputs are in hand: the rest of the model is skipped."""


@dataclass
class BlockInputs:
    """The calibration batch as a block receives it: ``hidden [N, L, H]`` plus the other arguments
    the model passed (Llama: ``position_embeddings``, ``attention_mask``; BERT: a positional mask)."""

    hidden: Tensor
    args: tuple
    kwargs: dict[str, Any]


def capture_block_inputs(model: nn.Module, first_block: nn.Module, tokens: Tensor) -> BlockInputs:
    """Run ``tokens [N, L]`` through ``model`` up to ``first_block`` (embeddings only) and keep its inputs."""
    captured: list[BlockInputs] = []

    def grab(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(BlockInputs(hidden, tuple(args[1:]), kwargs))
        raise _Stop

    # The first parameter holding data: a model dispatched layer by layer keeps the modules it
    # streams from disk on the meta device.
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(input_ids=tokens.to(device), **extra)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ConfigError(f"{type(model).__name__} never called its first transformer block; it cannot be calibrated")
    return captured[0]


def forward_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
    """The block's output as the next block's input (same extra arguments)."""
    out = block(inputs.hidden, *inputs.args, **inputs.kwargs)
    return BlockInputs(out[0] if isinstance(out, tuple) else out, inputs.args, inputs.kwargs)


def gram(rows: Tensor, parts: int = 8) -> Tensor:
    """``rows.T @ rows`` for ``rows [n, d]`` -> ``[d, d]``, computing only the blocks on and above
    the diagonal (in ``parts`` column bands) and mirroring the rest: about 56% of the products for
    8 bands. Bit-identical to the plain product on CPU (each entry sums over ``n`` the same way)."""
    d = rows.shape[1]
    edges = [round(d * i / parts) for i in range(parts + 1)] if d >= 32 * parts else [0, d]
    out = rows.new_empty(d, d)
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = rows[:, lo:hi].T @ rows[:, lo:]  # [hi - lo, d - lo]
        out[lo:hi, lo:] = band
        out[hi:, lo:hi] = band[:, hi - lo:].T
    return out


@dataclass
class LayerStatistics:
    """One layer's calibration statistics over the ``tokens`` rows of its input ``X [n, in]``:
    ``hessian`` ``2/n X^T X [in, in]`` or ``sq_norms`` ``sum_t x_tj^2 [in]``, float32."""

    tokens: int
    hessian: Tensor | None = None
    sq_norms: Tensor | None = None

    @classmethod
    def of(cls, x: Tensor, hessian: bool) -> "LayerStatistics":
        """Statistics of a layer input ``x [..., in]`` (any float dtype; not changed)."""
        rows = x.detach().reshape(-1, x.shape[-1]).float()  # [n, in]
        if hessian:
            return cls(rows.shape[0], hessian=gram(rows).mul_(2.0 / rows.shape[0]))  # [in, in]
        return cls(rows.shape[0], sq_norms=rows.pow(2).sum(0))  # [in]
