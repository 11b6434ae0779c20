"""Quality of a model by its kind, measured the same way for the original and for copies.

- causal LM: perplexity, next-token accuracy, KL and top-1 agreement against the original,
  zero-shot sentiment accuracy with its 95% interval, a greedy generation sample;
- encoder: cosine similarity of sentence embeddings to the original's, accuracy of a
  logistic head fitted on the original's embeddings;
- sequence classifier: accuracy on the labelled sentences.

The original's run leaves a :class:`Reference` that every compressed copy is compared with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from memopt_core.config import EvalConfig
from memopt_core.evaluation.causal_lm import evaluate_causal_lm, greedy_generate, model_device, zero_shot_sentiment
from memopt_core.evaluation.encoder import (classifier_accuracy, classifier_predictions, encoder_metrics, fit_probe,
                                            sentence_embeddings)
from memopt_core.loading.models import LoadedModel
from memopt_core.texts import TextSource, load_labelled_sentences, load_text, token_windows


@dataclass
class EvalData:
    """Inputs prepared once per model and evaluation config."""

    windows: torch.Tensor | None  # [n_windows, seq_len] token ids, causal LMs only
    sentences: list[tuple[str, int]]
    text: TextSource | None
    protocol: dict[str, Any]


@dataclass
class Reference:
    """What the original's evaluation leaves for comparing copies against it."""

    metrics: dict[str, Any]
    lm: Any = None  # evaluate.LMReference
    embeddings: torch.Tensor | None = None  # [n_sentences, hidden]
    probe: Any = None
    predictions: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def prepare(loaded: LoadedModel, config: EvalConfig) -> EvalData:
    """Tokenize the evaluation text into windows (causal LMs) and load the labelled sentences."""
    sentences = load_labelled_sentences()
    protocol: dict[str, Any] = {"kind": loaded.kind, "dtype": loaded.spec.dtype, "seed": config.seed,
                                "tokenizer": getattr(loaded.tokenizer, "name_or_path", "") or loaded.name,
                                "sentences": f"pang_lee_polarity ({len(sentences)} labelled sentences)"}
    if loaded.kind != "causal-lm":
        return EvalData(windows=None, sentences=sentences, text=None, protocol=protocol)
    text = load_text(config.text)
    windows = token_windows(loaded.tokenizer, text.text, config.seq_len, config.max_tokens)
    protocol.update(text=text.name, text_sha256=text.sha256, window=config.seq_len,
                    tokens=int(windows.numel()), windows=int(windows.shape[0]),
                    perplexity="exp(mean token NLL) over non-overlapping windows, remainder dropped")
    return EvalData(windows=windows, sentences=sentences, text=text, protocol=protocol)


def _lm_metrics(model: nn.Module, loaded: LoadedModel, data: EvalData, config: EvalConfig,
                reference: Reference | None) -> tuple[dict[str, Any], Any]:
    device = model_device(model)
    metrics, lm_reference = evaluate_causal_lm(model, data.windows.to(device),
                                               reference=reference.lm if reference else None,
                                               kl_top_k=config.kl_top_k)
    out = asdict(metrics)
    if config.zero_shot:
        out["zero_shot"] = asdict(zero_shot_sentiment(model, loaded.tokenizer, data.sentences))
    if config.gen_tokens:
        out["generation"] = {"prompt": config.prompt,
                             "text": greedy_generate(model, loaded.tokenizer, config.prompt, config.gen_tokens)}
    return out, lm_reference


def _encoder_metrics(model: nn.Module, loaded: LoadedModel, data: EvalData, config: EvalConfig,
                     reference: Reference | None) -> tuple[dict[str, Any], Reference]:
    texts = [s for s, _ in data.sentences]
    labels = [label for _, label in data.sentences]
    embeddings = sentence_embeddings(model, loaded.tokenizer, texts)
    if reference is None:
        probe = fit_probe(embeddings, labels, seed=config.seed)
        reference = Reference(metrics={}, embeddings=embeddings, probe=probe)
    metrics = encoder_metrics(reference.embeddings, embeddings, labels, reference.probe)
    return asdict(metrics), reference


def evaluate(model: nn.Module, loaded: LoadedModel, data: EvalData, config: EvalConfig,
             reference: Reference | None = None) -> tuple[dict[str, Any], Reference]:
    """Measure ``model`` (the original when ``reference`` is None, else a copy compared with it)."""
    with torch.inference_mode():
        if loaded.kind == "causal-lm":
            metrics, lm_reference = _lm_metrics(model, loaded, data, config, reference)
            return metrics, reference or Reference(metrics=metrics, lm=lm_reference)
        if loaded.kind == "encoder":
            metrics, new_reference = _encoder_metrics(model, loaded, data, config, reference)
            new_reference.metrics = new_reference.metrics or metrics
            return metrics, new_reference
        result = classifier_accuracy(model, loaded.tokenizer, data.sentences,
                                     reference_predictions=reference.predictions if reference else None)
        metrics = asdict(result)
        if reference is None:  # copies without positive/negative labels are scored by agreement with these
            predictions = classifier_predictions(model, loaded.tokenizer, [s for s, _ in data.sentences])
            reference = Reference(metrics=metrics, predictions=predictions)
        return metrics, reference
