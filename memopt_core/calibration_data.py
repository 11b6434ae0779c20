"""Calibration tokens for GPTQ, Wanda and SparseGPT, never the tokens being evaluated.

Evaluation reads the first ``EvalConfig.max_tokens`` tokens of its text (``datasets.token_windows``),
so calibration windows start after a protected prefix:

- bundled texts (``wikipedia``, ``news``): after ``max(eval max_tokens, 16,384)`` tokens (+ a
  margin), whichever text is being evaluated, because a dashboard may evaluate the same
  compressed model on the other bundled text (16,384 is DESIGN.md's reference protocol);
- a user file: after the evaluation prefix when it is the evaluation text, else anywhere.

``samples`` windows of ``seq_len`` tokens start at random positions (seeded; they may overlap,
as in the GPTQ reference) in a pool of tokens following the protected prefix. ``both`` draws half
the windows (rounded up) from Wikipedia, the rest from the news text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from memopt_core.config import BUNDLED_TEXTS, CalibConfig, EvalConfig
from memopt_core.datasets import load_text, token_windows
from memopt_core.errors import DataError

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
