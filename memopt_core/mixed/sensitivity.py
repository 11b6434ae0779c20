"""Which layers (or blocks) can take compression: compress ONE unit at a time and measure the change.

Cheap methods only (RTN quantization, magnitude pruning), on one loaded model: a structural copy
gets the unit's compressed modules, is scored on a small token budget against the original, then
gets its original modules back. Quality change:

- causal LM: the increase of the mean token NLL (``log`` of the perplexity ratio) on the first
  ``max_tokens`` tokens of the evaluation text, plus the KL to the original's predictions;
- encoder (and sequence classifier): the drop of the mean cosine similarity of sentence
  embeddings to the original's on the labelled sentences.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from memopt_core.compression.compress import compress_layers_, structural_copy
from memopt_core.compression.walk import layer_position, set_module, target_linears
from memopt_core.config import EvalConfig, PruneConfig, QuantConfig, TargetConfig
from memopt_core.errors import ConfigError, choices
from memopt_core.evaluation.causal_lm import evaluate_causal_lm
from memopt_core.evaluation.encoder import sentence_embeddings
from memopt_core.loading.models import LoadedModel
from memopt_core.texts import load_labelled_sentences, load_text, token_windows

UNITS = ("layer", "block")
DEFAULT_EVAL = EvalConfig(max_tokens=1024, seq_len=512, gen_tokens=0, zero_shot=False)
Progress = Callable[[int, int, str], None]  # (done, total, current unit)


@dataclass
class SensitivityRow:
    """One unit: ``delta`` is the quality loss (NLL increase, or cosine drop) when only it is compressed."""

    unit: str
    layers: list[str]
    params: int
    delta: float
    score: float  # mean NLL (causal) or mean cosine similarity (encoder) of the copy
    kl: float | None
    seconds: float


@dataclass
class SensitivityResult:
    """Rows sorted most sensitive first; ``baseline`` is the original's score."""

    rows: list[SensitivityRow]
    metric: str  # 'nll' or 'cosine'
    baseline: float
    setting: str
    by: str
    seconds: float
    protocol: dict[str, Any] = field(default_factory=dict)

    def ranking(self) -> list[str]:
        return [row.unit for row in self.rows]

    def deltas(self) -> dict[str, float]:
        return {row.unit: row.delta for row in self.rows}

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline, "setting": self.setting, "by": self.by,
                "seconds": self.seconds, "protocol": self.protocol, "rows": [asdict(row) for row in self.rows]}


class QualityProbe:
    """Scores a model against the original on a small fixed budget (built once, reused per unit).

    Causal LMs are scored on the first ``eval_config.max_tokens`` tokens of ``eval_config.text``,
    or on ``windows`` (LongTensor ``[n, seq_len]``) when given."""

    def __init__(self, loaded: LoadedModel, eval_config: EvalConfig = DEFAULT_EVAL,
                 windows: torch.Tensor | None = None) -> None:
        self.loaded, self.eval_config = loaded, eval_config
        self.causal = loaded.kind == "causal-lm"
        if self.causal:
            self._prepare_causal(windows)
        else:
            self.sentences = [s for s, _ in load_labelled_sentences()]
            self.reference = sentence_embeddings(loaded.model, loaded.tokenizer, self.sentences)
            self.baseline = 1.0
            self.protocol = {"sentences": len(self.sentences), "metric": "drop of mean cosine similarity"}

    def _prepare_causal(self, windows: torch.Tensor | None) -> None:
        text = "given windows"
        if windows is None:
            source = load_text(self.eval_config.text)
            text = source.name
            windows = token_windows(self.loaded.tokenizer, source.text, self.eval_config.seq_len,
                                    self.eval_config.max_tokens)
        self.windows = windows  # [n, seq_len]
        metrics, self.reference = evaluate_causal_lm(self.loaded.model, windows, kl_top_k=64)
        self.baseline = metrics.mean_nll
        self.protocol = {"text": text, "tokens": int(windows.numel()), "window": int(windows.shape[1]),
                         "metric": "mean token NLL increase (nats); KL over the original's top 64 + rest"}

    @property
    def metric(self) -> str:
        return "nll" if self.causal else "cosine"

    def measure(self, model: nn.Module) -> tuple[float, float, float | None]:
        """(score, delta = quality loss against the original, KL or None) of ``model``."""
        if self.causal:
            metrics, _ = evaluate_causal_lm(model, self.windows, reference=self.reference, kl_top_k=1)
            return metrics.mean_nll, metrics.mean_nll - self.baseline, metrics.kl_divergence
        embeddings = sentence_embeddings(model, self.loaded.tokenizer, self.sentences)
        cosine = float((embeddings * self.reference).sum(-1).mean())  # both L2-normalised
        return cosine, self.baseline - cosine, None


def units_of(names: list[str], by: str) -> dict[str, list[str]]:
    """Group layer names into units: each layer alone, or all layers of a transformer block."""
    if by not in UNITS:
        raise ConfigError(f"sensitivity unit {by!r} is not supported; choose {choices(UNITS)}")
    if by == "layer":
        return {name: [name] for name in names}
    units: dict[str, list[str]] = {}
    for name in names:
        index, kind = layer_position(name)
        unit = name[: -len(kind) - 1] if index is not None else name  # 'model.layers.3'
        units.setdefault(unit, []).append(name)
    return units


def _check_cheap(prune: PruneConfig | None, quant: QuantConfig | None) -> None:
    if prune is None and quant is None:
        raise ConfigError("sensitivity needs a compression to apply: give bits and/or a prune ratio")
    if (quant is not None and quant.method == "gptq") or (prune is not None and prune.method in ("wanda", "sparsegpt")):
        raise ConfigError("sensitivity compresses one unit at a time with cheap methods (RTN, magnitude); "
                          "GPTQ, Wanda and SparseGPT need calibration")


def measure_sensitivity(source, quant: QuantConfig | None, prune: PruneConfig | None = None, by: str = "layer",
                        eval_config: EvalConfig | None = None, targets: TargetConfig | None = None,
                        probe: QualityProbe | None = None, progress: Progress | None = None) -> SensitivityResult:
    """Compress each unit of ``source`` (a ``runner.Workbench`` or a ``LoadedModel``) alone and rank
    the units by the quality they lose, most sensitive first. The original is never changed;
    ``probe`` (built from ``eval_config``, default 1,024 tokens) can be shared across calls."""
    _check_cheap(prune, quant)
    loaded: LoadedModel = getattr(source, "loaded", source)
    start = time.perf_counter()
    probe = probe or QualityProbe(loaded, eval_config or DEFAULT_EVAL)
    units = units_of(list(target_linears(loaded.model, targets)), by)
    copy = structural_copy(loaded.model)
    rows = []
    for done, (unit, names) in enumerate(units.items()):
        if progress:
            progress(done, len(units), unit)
        began = time.perf_counter()
        saved = {name: copy.get_submodule(name) for name in names}
        compress_layers_(copy, names, prune, quant)
        score, delta, kl = probe.measure(copy)
        for name, module in saved.items():
            set_module(copy, name, module)
        params = sum(m.in_features * m.out_features for m in saved.values())
        rows.append(SensitivityRow(unit, names, params, delta, score, kl, time.perf_counter() - began))
    if progress:
        progress(len(units), len(units), "done")
    rows.sort(key=lambda row: row.delta, reverse=True)
    setting = " + ".join(c.label for c in (prune, quant) if c is not None)
    return SensitivityResult(rows, probe.metric, probe.baseline, setting, by, time.perf_counter() - start,
                             dict(probe.protocol))
