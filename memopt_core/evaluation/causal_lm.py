"""Evaluating causal language models: perplexity, next-token accuracy, KL divergence and top-1
agreement against the original model, zero-shot sentiment, greedy generation and latency.

Perplexity protocol (DESIGN.md): exp(mean token NLL) over the given non-overlapping windows,
each window evaluated on its own, so a window of ``seq_len`` tokens gives ``seq_len - 1``
predictions. Log-softmax is taken in float32 whatever dtype the model runs in.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from memopt_core.errors import ConfigError, DataError
from memopt_core.evaluation.stats import AccuracyResult, kl_exact, kl_top_k, rest_log_mass

# Float32 logits per batch (64 MiB). Log-softmax and the reference hold a few copies of them;
# on CPU one 512-token window with a 49k vocabulary already fills the budget, and measured
# throughput there drops with larger batches, so only small-vocabulary models get batched.
_LOGITS_BUDGET = 1 << 24

SENTIMENT_PROMPT = "Review: {text}\nSentiment (positive or negative):"
SENTIMENT_LABELS = (" negative", " positive")  # index = label (0 negative, 1 positive)


@dataclass(frozen=True, eq=False)
class LMReference:
    """What the original model's run keeps for comparing other models against it.

    One row per prediction in window order (``n_windows * (seq_len - 1)`` rows), on the CPU:
    ``targets`` [N] the text's next tokens (proves both runs saw the same windows), ``top1`` [N]
    the original's argmax, and either ``log_probs`` [N, vocab] (exact KL; costly for large
    vocabularies) or ``top_ids`` / ``top_log_probs`` [N, k] with ``rest_log_prob`` [N], the log of
    the mass outside the top k (KL lower bound). ``diverged`` marks a run stopped by NaN/Inf.
    """

    targets: Tensor
    top1: Tensor
    log_probs: Tensor | None = None
    top_ids: Tensor | None = None
    top_log_probs: Tensor | None = None
    rest_log_prob: Tensor | None = None
    diverged: bool = False

    @property
    def tokens(self) -> int:
        return int(self.targets.numel())

    @property
    def top_k(self) -> int | None:
        """k of the stored top-k, or None when full log-probs are kept."""
        return None if self.top_ids is None else int(self.top_ids.shape[1])

    @property
    def kl_method(self) -> str:
        return "exact" if self.top_k is None else f"top-{self.top_k} + rest bucket"

    def kl(self, start: int, log_probs: Tensor) -> Tensor:
        """KL(original || other) for rows ``start:start+T`` given the other's log-probs [T, V] -> [T]."""
        rows = slice(start, start + log_probs.shape[0])
        device = log_probs.device
        if self.log_probs is not None:
            return kl_exact(self.log_probs[rows].to(device), log_probs)
        return kl_top_k(self.top_ids[rows].to(device), self.top_log_probs[rows].to(device),
                        self.rest_log_prob[rows].to(device), log_probs)


@dataclass(frozen=True)
class LMMetrics:
    """Quality of a causal LM on a set of windows. KL fields are None without a reference;
    a diverged run has infinite perplexity, NaN accuracies and says why in ``reason``."""

    perplexity: float
    mean_nll: float
    tokens: int
    top1_accuracy: float
    seconds: float
    latency_ms_per_window: float
    windows: int
    seq_len: int
    diverged: bool = False
    reason: str = ""
    kl_divergence: float | None = None
    top1_agreement: float | None = None
    kl_method: str | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.windows * self.seq_len / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class _Totals:
    """Running sums over batches (float64 via Python floats, so long texts lose no precision)."""

    nll: float = 0.0
    correct: int = 0
    kl: float = 0.0
    agree: int = 0
    tokens: int = 0
    parts: list[dict[str, Tensor]] = field(default_factory=list)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter that holds data (CPU for none): a model dispatched
    layer by layer keeps the parameters of its modules on disk on the meta device."""
    param = next((p for p in model.parameters() if p.device.type != "meta"), None)
    return param.device if param is not None else torch.device("cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_windows(windows: Tensor) -> Tensor:
    if not isinstance(windows, Tensor) or windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, Tensor) else type(windows).__name__
        raise DataError(f"token windows must be a tensor [n_windows >= 1, seq_len >= 2], got {shape}")
    return windows.long()


def _check_reference(reference: LMReference, targets: Tensor) -> None:
    if reference.diverged:
        raise DataError("the reference model diverged (NaN/Inf logits); KL needs a reference with finite perplexity")
    if reference.tokens != targets.numel() or not torch.equal(reference.targets, targets):
        raise DataError(f"the reference holds {reference.tokens} predictions of other windows than these "
                        f"({targets.numel()}); evaluate both models on the same windows")


def _auto_batch_size(model: nn.Module, windows: Tensor) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = getattr(head, "out_features", None) or getattr(model.config, "vocab_size", 1)
    return max(1, min(windows.shape[0], _LOGITS_BUDGET // (windows.shape[1] * vocab)))


def _reference_part(log_probs: Tensor, top1: Tensor, kl_top_k: int | None) -> dict[str, Tensor]:
    """The rows of an LMReference for one batch: log-probs [T, V], argmax [T] -> CPU tensors."""
    if kl_top_k is None:
        return {"top1": top1.cpu(), "log_probs": log_probs.cpu()}
    top_log_probs, top_ids = log_probs.topk(min(kl_top_k, log_probs.shape[-1]), dim=-1)  # [T, k]
    return {"top1": top1.cpu(), "top_ids": top_ids.cpu(), "top_log_probs": top_log_probs.cpu(),
            "rest_log_prob": rest_log_mass(log_probs, top_ids).cpu()}


def _score_batch(totals: _Totals, log_probs: Tensor, targets: Tensor, reference: LMReference | None,
                 kl_top_k: int | None) -> None:
    """Add one batch (log-probs [T, V], targets [T]) to the running sums."""
    top1 = log_probs.argmax(-1)  # [T]
    totals.nll -= log_probs.gather(-1, targets[:, None]).double().sum().item()
    totals.correct += int((top1 == targets).sum())
    if reference is not None:
        totals.kl += reference.kl(totals.tokens, log_probs).double().sum().item()
        totals.agree += int((top1 == reference.top1[totals.tokens:totals.tokens + len(targets)].to(top1.device)).sum())
    totals.tokens += len(targets)
    totals.parts.append(_reference_part(log_probs, top1, kl_top_k))


def _finish(totals: _Totals, windows: Tensor, seconds: float, reference: LMReference | None,
            reason: str) -> tuple[LMMetrics, LMReference]:
    n, seq_len = windows.shape
    targets = windows[:, 1:].reshape(-1)
    mean_nll = totals.nll / totals.tokens if totals.tokens else float("inf")
    if not reason and not math.isfinite(mean_nll):
        reason = "the mean NLL is infinite: the model gives some text token zero probability"
    diverged = bool(reason)
    metrics = LMMetrics(
        perplexity=float("inf") if diverged or mean_nll > 709 else math.exp(mean_nll),
        mean_nll=float("inf") if diverged else mean_nll, tokens=targets.numel(),
        top1_accuracy=float("nan") if diverged else totals.correct / totals.tokens,
        seconds=seconds, latency_ms_per_window=1000 * seconds / n, windows=n, seq_len=seq_len,
        diverged=diverged, reason=reason)
    if reference is not None:
        kl, agreement = (float("inf"), float("nan")) if diverged else (totals.kl / totals.tokens,
                                                                        totals.agree / totals.tokens)
        metrics = replace(metrics, kl_divergence=kl, top1_agreement=agreement, kl_method=reference.kl_method)
    return metrics, _build_reference(totals, targets, diverged)


def _build_reference(totals: _Totals, targets: Tensor, diverged: bool) -> LMReference:
    """Join the per-batch parts; a diverged run keeps what it had, flagged so no one compares to it."""
    if not totals.parts:
        return LMReference(targets=targets.cpu(), top1=torch.empty(0, dtype=torch.long), diverged=diverged)
    parts = {key: torch.cat([part[key] for part in totals.parts]) for key in totals.parts[0]}
    return LMReference(targets=targets.cpu(), diverged=diverged, **parts)


def evaluate_causal_lm(model: nn.Module, windows: Tensor, reference: LMReference | None = None,
                       kl_top_k: int | None = 64, batch_size: int | None = None) -> tuple[LMMetrics, LMReference]:
    """Perplexity and next-token accuracy of ``model`` on ``windows`` [n_windows, seq_len] (token ids).

    With ``reference`` (the original model's LMReference on the same windows) also the mean KL per
    token and top-1 agreement; the reference decides exact or top-k KL. Returns this model's own
    reference, keeping full log-probs when ``kl_top_k`` is None, else the top ``kl_top_k``.
    ``batch_size`` None picks one that bounds the logits' memory. NaN/Inf logits never raise:
    the run stops and reports ``diverged``. The model is not changed.
    """
    windows = _check_windows(windows)
    for name, value in (("kl_top_k", kl_top_k), ("batch size", batch_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} {value!r} must be a positive whole number or None")
    targets_all = windows[:, 1:].reshape(-1)
    if reference is not None:
        _check_reference(reference, targets_all)
    device, totals, reason = model_device(model), _Totals(), ""
    batch_size = batch_size or _auto_batch_size(model, windows)
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, windows.shape[0], batch_size):
            batch = windows[first:first + batch_size].to(device)  # [B, S]
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # [B, S-1, V]
            if not torch.isfinite(logits).all():
                reason = (f"logits contain NaN or Inf in windows {first}-{first + len(batch) - 1}: "
                          "the weights or the dtype's range broke the model")
                break
            log_probs = logits.float().log_softmax(-1).flatten(0, 1)  # [B*(S-1), V]
            _score_batch(totals, log_probs, batch[:, 1:].reshape(-1), reference, kl_top_k)
    _synchronize(device)
    return _finish(totals, windows, time.perf_counter() - start, reference, reason)


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


def _sum_log_probs(model: nn.Module, sequences: list[list[int]], starts: list[int], pad_id: int) -> Tensor:
    """Sum of log P(token t | tokens < t) over t in [start, len) for each sequence -> [B] float64."""
    device = model_device(model)
    ids, mask = _pad_right(sequences, pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    log_probs = logits[:, :-1].float().log_softmax(-1)  # [B, L-1, V]; row t predicts token t+1
    token_lp = log_probs.gather(-1, ids[:, 1:, None].to(device)).squeeze(-1).cpu()  # [B, L-1]
    position = torch.arange(1, ids.shape[1])[None, :]  # [1, L-1]: index of the predicted token
    lengths = mask.sum(1, keepdim=True)
    scored = (position >= torch.tensor(starts)[:, None]) & (position < lengths)
    return torch.where(scored, token_lp.double(), 0.0).sum(1)


def continuation_log_probs(model: nn.Module, tokenizer, prompts: list[str], continuations: list[str] | tuple[str, ...],
                           batch_size: int = 16) -> Tensor:
    """Total log-prob of each continuation after each prompt -> [n_prompts, n_continuations] float64.

    Prompt and continuation are tokenized apart (the prompt with the tokenizer's special tokens),
    so a multi-token continuation is scored as the sum over its tokens. Sequences are sorted by
    length before batching to waste little compute on padding.
    """
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    cont_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    if any(len(p) == 0 for p in prompt_ids) or any(len(c) == 0 for c in cont_ids):
        raise DataError("every prompt and continuation must give at least one token")
    jobs = [(i, j, p + c, len(p)) for i, p in enumerate(prompt_ids) for j, c in enumerate(cont_ids)]
    jobs.sort(key=lambda job: len(job[2]))
    scores = torch.empty(len(prompts), len(cont_ids), dtype=torch.float64)
    with torch.inference_mode():
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first:first + batch_size]
            sums = _sum_log_probs(model, [job[2] for job in chunk], [job[3] for job in chunk], _pad_id(tokenizer))
            for (i, j, _, _), value in zip(chunk, sums.tolist()):
                scores[i, j] = value
    return scores


def zero_shot_sentiment(model: nn.Module, tokenizer, sentences: list[tuple[str, int]],
                        batch_size: int = 16) -> AccuracyResult:
    """Zero-shot sentiment accuracy: for each (sentence, label 0 negative / 1 positive) the model
    picks the label whose continuation (' negative' / ' positive') has the higher total log-prob."""
    if not sentences:
        raise DataError("no labelled sentences to evaluate zero-shot sentiment on")
    prompts = [SENTIMENT_PROMPT.format(text=text) for text, _ in sentences]
    scores = continuation_log_probs(model, tokenizer, prompts, SENTIMENT_LABELS, batch_size)  # [n, 2]
    predictions = (scores[:, 1] > scores[:, 0]).long()
    correct = int((predictions == torch.tensor([int(label) for _, label in sentences])).sum())
    method = (f"zero-shot: total log-prob of {SENTIMENT_LABELS[1]!r} vs {SENTIMENT_LABELS[0]!r} "
              f"after {SENTIMENT_PROMPT!r}")
    return AccuracyResult.from_counts(correct, len(sentences), method)


def greedy_generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy (deterministic) continuation of ``prompt``; returns only the new text."""
    if max_new_tokens <= 0:
        return ""
    encoded = tokenizer(prompt, return_tensors="pt")
    device = model_device(model)
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=_pad_id(tokenizer))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def measure_latency(model: nn.Module, windows: Tensor, repeats: int = 3) -> dict:
    """Mean and spread over ``repeats`` of the forward time per window (one window per call),
    after one warm-up call. Returns ``{"mean_ms", "std_ms", "device"}``."""
    windows = _check_windows(windows)
    device = model_device(model)
    batch = windows.to(device)
    per_window_ms = []
    with torch.inference_mode():
        model(input_ids=batch[:1], use_cache=False)  # first call allocates and picks kernels
        for _ in range(max(1, repeats)):
            _synchronize(device)
            start = time.perf_counter()
            for row in batch:
                model(input_ids=row[None], use_cache=False)
            _synchronize(device)
            per_window_ms.append(1000 * (time.perf_counter() - start) / len(batch))
    std = statistics.stdev(per_window_ms) if len(per_window_ms) > 1 else 0.0
    return {"mean_ms": statistics.fmean(per_window_ms), "std_ms": std, "device": str(device)}
