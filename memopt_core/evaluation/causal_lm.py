"""Causal-LM measurements besides window scoring (``progressive.py``): zero-shot sentiment,
greedy generation and latency.

Zero-shot sentiment scores each labelled sentence in one forward: the prompt, with the logits kept
only at the positions that predict a continuation token (``logits_to_keep``), in batches sorted by
length; single-token labels (" negative" / " positive") share one sequence per sentence.
"""
from __future__ import annotations

import inspect
import statistics
import time

import torch
from torch import Tensor, nn
from transformers import StoppingCriteria, StoppingCriteriaList

from memopt_core.errors import DataError
from memopt_core.evaluation.compute import model_device, synchronize
from memopt_core.evaluation.progressive import CancelToken, check_windows
from memopt_core.evaluation.stats import AccuracyResult

SENTIMENT_PROMPT = "Review: {text}\nSentiment (positive or negative):"
SENTIMENT_LABELS = (" negative", " positive")  # index = label (0 negative, 1 positive)
# Sequences per forward of the zero-shot scoring: short prompts (about 40 tokens) batch well on CPU.
ZERO_SHOT_BATCH = 32


def _pad_right(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token lists -> ids [B, L] and attention mask [B, L].

    Built here rather than by the tokenizer, so its ``padding_side`` cannot matter: with right
    padding real tokens keep positions 0..len-1 and never attend to the pads after them.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


def _pad_id(tokenizer) -> int:
    """Any id works for right padding (masked, never scored); prefer the tokenizer's own."""
    return next((int(i) for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)


def _keeps_logits(model: nn.Module) -> bool:
    """Whether the model's forward can compute logits at chosen positions only (``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _position_log_probs(model: nn.Module, sequences: list[list[int]], positions: list[list[int]],
                        pad_id: int) -> Tensor:
    """Float32 log-probs of the next token at the given positions of each sequence -> [B, K, V] (CPU).

    ``positions[b]`` index ``sequences[b]``; shorter lists are padded with their last position, so
    K is the longest list. Only those positions reach the output layer when the model allows it."""
    device = model_device(model)
    ids, mask = _pad_right(sequences, pad_id)
    width = max(len(p) for p in positions)
    keep = torch.tensor([p + [p[-1]] * (width - len(p)) for p in positions])  # [B, K]
    inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    if _keeps_logits(model):
        logits = model(**inputs, logits_to_keep=keep.to(device)).logits  # [B, K, V]
    else:
        logits = torch.take_along_dim(model(**inputs).logits, keep.to(device)[..., None], dim=1)
    return logits.float().log_softmax(-1).cpu()


def _jobs(prompt_ids: list[list[int]], cont_ids: list[list[int]]) -> list[tuple[int, list[int], list[int], dict]]:
    """One sequence per prompt when every continuation is one token, else one per (prompt, continuation).

    Each job: (prompt row, token ids, positions whose logits are kept, {column: [(kept index, token)]})."""
    if all(len(c) == 1 for c in cont_ids):
        return [(i, p, [len(p) - 1], {j: [(0, c[0])] for j, c in enumerate(cont_ids)})
                for i, p in enumerate(prompt_ids)]
    return [(i, p + c, list(range(len(p) - 1, len(p) + len(c) - 1)), {j: list(enumerate(c))})
            for i, p in enumerate(prompt_ids) for j, c in enumerate(cont_ids)]


def continuation_log_probs(model: nn.Module, tokenizer, prompts: list[str], continuations: list[str] | tuple[str, ...],
                           batch_size: int = ZERO_SHOT_BATCH) -> Tensor:
    """Total log-prob of each continuation after each prompt -> [n_prompts, n_continuations] float64.

    Prompt and continuation are tokenized apart (the prompt with the tokenizer's special tokens),
    so a multi-token continuation is scored as the sum over its tokens. Single-token continuations
    share one sequence per prompt. Sequences are sorted by length before batching (little padding).
    """
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    cont_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(len(p) == 0 for p in prompt_ids) or any(len(c) == 0 for c in cont_ids):
        raise DataError("every prompt and continuation must give at least one token")
    jobs = sorted(_jobs(prompt_ids, cont_ids), key=lambda job: len(job[1]))
    scores = torch.empty(len(prompts), len(cont_ids), dtype=torch.float64)
    with torch.inference_mode():
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first:first + batch_size]
            log_probs = _position_log_probs(model, [job[1] for job in chunk], [job[2] for job in chunk],
                                            _pad_id(tokenizer)).double()  # [B, K, V]
            for row, (prompt, _, _, columns) in enumerate(chunk):
                for column, pairs in columns.items():
                    scores[prompt, column] = sum(log_probs[row, k, token].item() for k, token in pairs)
    return scores


def zero_shot_scores(model: nn.Module, tokenizer, sentences: list[tuple[str, int]],
                     batch_size: int = ZERO_SHOT_BATCH) -> Tensor:
    """Log-probs of the labels' continuations after each sentence's prompt -> [n, 2] float64
    (column 0 ' negative', column 1 ' positive')."""
    if not sentences:
        raise DataError("no labelled sentences to evaluate zero-shot sentiment on")
    prompts = [SENTIMENT_PROMPT.format(text=text) for text, _ in sentences]
    return continuation_log_probs(model, tokenizer, prompts, SENTIMENT_LABELS, batch_size)


def sentiment_accuracy(scores: Tensor, sentences: list[tuple[str, int]]) -> AccuracyResult:
    """Accuracy of picking the label with the higher score ([n, 2] from :func:`zero_shot_scores`)."""
    predictions = (scores[:, 1] > scores[:, 0]).long()
    correct = int((predictions == torch.tensor([int(label) for _, label in sentences])).sum())
    method = (f"zero-shot: total log-prob of {SENTIMENT_LABELS[1]!r} vs {SENTIMENT_LABELS[0]!r} "
              f"after {SENTIMENT_PROMPT!r}")
    return AccuracyResult.from_counts(correct, len(sentences), method)


def zero_shot_sentiment(model: nn.Module, tokenizer, sentences: list[tuple[str, int]],
                        batch_size: int = ZERO_SHOT_BATCH) -> AccuracyResult:
    """Zero-shot sentiment accuracy: for each (sentence, label 0 negative / 1 positive) the model
    picks the label whose continuation (' negative' / ' positive') has the higher total log-prob."""
    return sentiment_accuracy(zero_shot_scores(model, tokenizer, sentences, batch_size), sentences)


class _Cancelled(StoppingCriteria):
    """Stops generation between tokens once ``cancel`` is set."""

    def __init__(self, cancel: CancelToken):
        self.cancel = cancel

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def greedy_generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int,
                    cancel: CancelToken | None = None) -> str:
    """Greedy (deterministic) continuation of ``prompt``; returns only the new text (cut short
    when ``cancel`` is set). For a compressed model, call it inside
    ``compression.dequantize_once.dequantized_once(model)``: one forward per token otherwise
    rebuilds every weight from its codes each time."""
    if max_new_tokens <= 0:
        return ""
    encoded = tokenizer(prompt, return_tensors="pt")
    device = model_device(model)
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    stopping = StoppingCriteriaList([_Cancelled(cancel)] if cancel is not None else [])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=_pad_id(tokenizer), stopping_criteria=stopping)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def measure_latency(model: nn.Module, windows: Tensor, repeats: int = 3) -> dict:
    """Mean and spread over ``repeats`` of the forward time per window (one window per call),
    after one warm-up call. Returns ``{"mean_ms", "std_ms", "device"}``."""
    windows = check_windows(windows)
    device = model_device(model)
    batch = windows.to(device)
    per_window_ms = []
    with torch.inference_mode():
        model(input_ids=batch[:1], use_cache=False)  # first call allocates and picks kernels
        for _ in range(max(1, repeats)):
            synchronize(device)
            start = time.perf_counter()
            for row in batch:
                model(input_ids=row[None], use_cache=False)
            synchronize(device)
            per_window_ms.append(1000 * (time.perf_counter() - start) / len(batch))
    std = statistics.stdev(per_window_ms) if len(per_window_ms) > 1 else 0.0
    return {"mean_ms": statistics.fmean(per_window_ms), "std_ms": std, "device": str(device)}
