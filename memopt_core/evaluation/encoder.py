"""Evaluating encoders and sequence classifiers.

Sentence encoders: mean-pooled, L2-normalised embeddings (the all-MiniLM-L6-v2 recipe), compared
with the original's by cosine, and a logistic-regression probe fitted once on the ORIGINAL
embeddings and applied to every compressed model's, so only the encoder changes between runs.
Sequence classifiers: their own head, scored against the labels when its classes read as
positive/negative, otherwise as agreement with the original model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

from memopt_core.errors import DataError
from memopt_core.evaluation.causal_lm import model_device
from memopt_core.evaluation.stats import AccuracyResult, wilson_interval


@dataclass(frozen=True)
class EncoderMetrics:
    """Mean cosine to the original's embeddings (1.0 for the original) and probe accuracy on the
    test split with its Wilson 95% interval."""

    cosine_similarity: float
    accuracy: float
    correct: int
    n_test: int
    ci_low: float
    ci_high: float


@dataclass(frozen=True, eq=False)
class Probe:
    """A logistic-regression head fitted on the original embeddings' train split; the split
    indices are fixed so every model is scored on the same test sentences."""

    classifier: LogisticRegression
    train_index: np.ndarray
    test_index: np.ndarray


def encode_batch(model: nn.Module, tokenizer, texts: list[str]) -> dict[str, Tensor]:
    """Tokenize with right padding (absolute positions stay correct) and truncation to what the
    model's position table holds; tensors on the model's device."""
    limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=min(limit, tokenizer.model_max_length),
                        padding_side="right", return_tensors="pt")
    device = model_device(model)
    return {key: value.to(device) for key, value in encoded.items()}


def _batches(items: list, size: int):
    if size < 1:
        raise DataError(f"batch size {size} must be a positive whole number")
    for first in range(0, len(items), size):
        yield items[first:first + size]


def sentence_embeddings(model: nn.Module, tokenizer, sentences: list[str], batch_size: int = 32) -> Tensor:
    """Mean-pooled (over the attention mask, so padding is excluded) and L2-normalised last hidden
    states -> float32 [n, hidden] on the CPU. A *ForSequenceClassification model is pooled from
    its base encoder."""
    if not sentences:
        raise DataError("no sentences to embed")
    encoder = getattr(model, "base_model", model)
    parts = []
    with torch.inference_mode():
        for chunk in _batches(list(sentences), batch_size):
            encoded = encode_batch(model, tokenizer, chunk)
            hidden = encoder(**encoded).last_hidden_state.float()  # [B, S, H]
            mask = encoded["attention_mask"][..., None].float()  # [B, S, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, H]
            parts.append(F.normalize(mean, dim=-1).cpu())
    return torch.cat(parts)


def fit_probe(orig_embeddings: Tensor, labels, seed: int = 0, test_fraction: float = 0.5) -> Probe:
    """Fit a logistic head on a stratified, seeded train split of the original's embeddings [n, H]."""
    y = np.asarray(labels)
    if len(y) != len(orig_embeddings):
        raise DataError(f"{len(orig_embeddings)} embeddings but {len(y)} labels; they must pair up")
    try:
        train, test = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)
    except ValueError as err:
        raise DataError(f"cannot split {len(y)} sentences into train and test with each label in both: {err}") from None
    x = orig_embeddings.float().cpu().numpy()
    classifier = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    return Probe(classifier=classifier, train_index=np.sort(train), test_index=np.sort(test))


def encoder_metrics(reference_embeddings: Tensor, embeddings: Tensor, labels, probe: Probe) -> EncoderMetrics:
    """Cosine of ``embeddings`` [n, H] to the original's ``reference_embeddings`` [n, H] (same
    sentences), and accuracy of the original-fitted ``probe`` on ``embeddings``' test split.
    For the original model pass its embeddings as both."""
    if reference_embeddings.shape != embeddings.shape:
        raise DataError(f"embeddings of shape {tuple(embeddings.shape)} do not match the reference's "
                        f"{tuple(reference_embeddings.shape)}; embed the same sentences with the same architecture")
    cosine = F.cosine_similarity(reference_embeddings.float(), embeddings.float(), dim=-1).mean().item()
    test = probe.test_index
    predictions = probe.classifier.predict(embeddings.float().cpu().numpy()[test])
    correct = int((predictions == np.asarray(labels)[test]).sum())
    low, high = wilson_interval(correct, len(test))
    return EncoderMetrics(cosine_similarity=cosine, accuracy=correct / len(test), correct=correct,
                          n_test=len(test), ci_low=low, ci_high=high)


def classifier_logits(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32) -> Tensor:
    """Logits of a *ForSequenceClassification model -> float32 [n, num_labels] on the CPU."""
    if not texts:
        raise DataError("no sentences to classify")
    parts = []
    with torch.inference_mode():
        for chunk in _batches(list(texts), batch_size):
            parts.append(model(**encode_batch(model, tokenizer, chunk)).logits.float().cpu())
    return torch.cat(parts)


def classifier_predictions(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32) -> Tensor:
    """Predicted class ids [n] (the original's become ``reference_predictions`` for the others)."""
    return classifier_logits(model, tokenizer, texts, batch_size).argmax(-1)


def sentiment_classes(id2label: dict) -> dict[int, int] | None:
    """Map class ids whose names contain 'pos' / 'neg' (any case) to label 1 / 0; None unless
    both polarities are present."""
    mapping = {}
    for class_id, name in (id2label or {}).items():
        lowered = str(name).lower()
        if "pos" in lowered:
            mapping[int(class_id)] = 1
        elif "neg" in lowered:
            mapping[int(class_id)] = 0
    return mapping if set(mapping.values()) == {0, 1} else None


def classifier_accuracy(model: nn.Module, tokenizer, sentences: list[tuple[str, int]],
                        reference_predictions: Tensor | list[int] | None = None,
                        batch_size: int = 32) -> AccuracyResult:
    """Accuracy of a sequence classifier on (sentence, label 0 negative / 1 positive) pairs.

    When the head's class names read as positive/negative, the prediction is the best of those
    classes, scored against the labels. Otherwise the result is agreement with
    ``reference_predictions`` (the original model's class ids); without them the model is taken to
    be the original itself and agrees fully. ``method`` says which was measured.
    """
    texts = [text for text, _ in sentences]
    logits = classifier_logits(model, tokenizer, texts, batch_size)  # [n, num_labels]
    id2label = getattr(model.config, "id2label", None) or {}
    mapping = sentiment_classes(id2label)
    names = ", ".join(str(id2label[k]) for k in sorted(id2label)) or "none"
    if mapping is not None:
        ids = sorted(mapping)
        best = torch.tensor(ids)[logits[:, ids].argmax(-1)]
        predicted = torch.tensor([mapping[int(i)] for i in best])
        correct = int((predicted == torch.tensor([int(label) for _, label in sentences])).sum())
        return AccuracyResult.from_counts(correct, len(texts), f"classifier head ({names}) against the labels")
    method = f"agreement with the original model's predictions (head labels {names} are not positive/negative)"
    if reference_predictions is None:
        return AccuracyResult.from_counts(len(texts), len(texts), method + "; this is the original")
    reference = torch.as_tensor(reference_predictions).long().cpu()
    if reference.numel() != len(texts):
        raise DataError(f"{reference.numel()} reference predictions for {len(texts)} sentences; they must pair up")
    return AccuracyResult.from_counts(int((logits.argmax(-1) == reference).sum()), len(texts), method)
