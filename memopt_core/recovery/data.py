"""What recovery trains on: token windows (causal LMs) or sentences (encoders), never the evaluated ones.

Causal LMs read their evaluation from the first ``EvalConfig.max_tokens`` tokens of a text, so
training windows come from after the same protected prefix as calibration data
(``compression.calibration_data.protected_prefix``: 16,384 tokens + a margin for the bundled texts,
whichever one is evaluated). The tokens after it are cut into non-overlapping windows, shuffled
with the seed; the first ``validation_windows`` are held out for the live curve and for choosing
the best checkpoint, the rest train (reused in order when a run needs more than the text holds).

Encoders are evaluated on the 200 labelled movie-review sentences; they train on sentences of the
training text (4 to 64 words, any exact copy of an evaluated sentence dropped), split the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from memopt_core.compression.calibration_data import protected_prefix
from memopt_core.config import EvalConfig
from memopt_core.errors import DataError
from memopt_core.texts import load_text, token_windows
from memopt_core.recovery.config import RecoveryConfig

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SENTENCE_WORDS = (4, 64)


@dataclass(frozen=True, eq=False)
class TrainingData:
    """``train``: LongTensor ``[n, seq_len]`` windows or a list of sentences; ``validation`` the
    same, held out; ``description`` what every result records (texts, tokens, split rule)."""

    train: Any
    validation: Any
    description: dict[str, Any]

    def batch(self, step: int, size: int) -> Any:
        """The ``size`` training items of step ``step`` (0-based), wrapping around the training set."""
        n = len(self.train)
        index = [(step * size + i) % n for i in range(size)]
        if isinstance(self.train, torch.Tensor):
            return self.train[index]  # [size, seq_len]
        return [self.train[i] for i in index]


def _texts(name: str) -> list[str]:
    return ["wikipedia", "news"] if name == "both" else [name]


def _shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole numbers, larger first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def _windows_of(tokenizer, name: str, count: int, seq_len: int, eval_config: EvalConfig) -> tuple[torch.Tensor, dict]:
    """Up to ``count`` non-overlapping windows ``[n, seq_len]`` after the protected prefix of ``name``."""
    source = load_text(name)
    skip = protected_prefix(name, eval_config)
    try:
        ids = token_windows(tokenizer, source.text, seq_len, skip + count * seq_len).reshape(-1)[skip:]
    except DataError:
        ids = torch.empty(0, dtype=torch.long)
    n = ids.numel() // seq_len
    info = {"name": source.name, "sha256": source.sha256, "first_token": skip, "windows": n,
            "tokens": n * seq_len}
    return ids[:n * seq_len].view(n, seq_len), info


def training_windows(tokenizer, config: RecoveryConfig, eval_config: EvalConfig) -> TrainingData:
    """Validation and training windows for a causal LM (see the module doc). Raises DataError
    when a text holds fewer windows than one validation set plus one step needs."""
    names = _texts(config.train_text)
    wanted = config.steps * config.windows_per_step + config.validation_windows * len(names)
    generator = torch.Generator().manual_seed(config.seed)
    validation, train, texts = [], [], []
    for name, share in zip(names, _shares(wanted, len(names))):
        windows, info = _windows_of(tokenizer, name, share, config.seq_len, eval_config)
        need = config.validation_windows + 1
        if len(windows) < need:
            raise DataError(f"training text {info['name']!r} has {info['tokens']:,} tokens after the "
                            f"{info['first_token']:,} kept for evaluation; {need * config.seq_len:,} are needed "
                            f"for {config.validation_windows} validation windows and one training window")
        order = torch.randperm(len(windows), generator=generator)
        validation.append(windows[order[:config.validation_windows]])
        train.append(windows[order[config.validation_windows:]])
        texts.append(info)
    train_all = torch.cat(train)
    train_all = train_all[torch.randperm(len(train_all), generator=generator)]  # mix the texts
    description = {"text": config.train_text, "texts": texts, "seq_len": config.seq_len,
                   "train_windows": len(train_all), "train_tokens": int(train_all.numel()),
                   "validation_windows": config.validation_windows * len(names),
                   "validation_tokens": config.validation_windows * len(names) * config.seq_len,
                   "seed": config.seed,
                   "rule": "non-overlapping windows after the tokens kept for evaluation; validation windows "
                           "held out from training"}
    return TrainingData(train=train_all, validation=torch.cat(validation), description=description)


def sentences_of(text: str) -> list[str]:
    """Sentences of ``text`` with 4 to 64 words, whitespace collapsed, in order."""
    pieces = (" ".join(part.split()) for part in _SENTENCE_END.split(text))
    return [p for p in pieces if SENTENCE_WORDS[0] <= len(p.split()) <= SENTENCE_WORDS[1]]


def training_sentences(config: RecoveryConfig, evaluated: list[str]) -> TrainingData:
    """Validation and training sentences for an encoder; ``evaluated`` sentences are never used."""
    names = _texts(config.train_text)
    excluded = {" ".join(s.split()) for s in evaluated}
    wanted = config.steps * config.sentences_per_step + config.validation_sentences * len(names)
    generator = torch.Generator().manual_seed(config.seed)
    validation, train, texts = [], [], []
    for name, share in zip(names, _shares(wanted, len(names))):
        source = load_text(name)
        pool = [s for s in sentences_of(source.text) if s not in excluded]
        if len(pool) < config.validation_sentences + 1:
            raise DataError(f"training text {source.name!r} has {len(pool)} sentences of {SENTENCE_WORDS[0]} to "
                            f"{SENTENCE_WORDS[1]} words; {config.validation_sentences + 1} are needed")
        order = torch.randperm(len(pool), generator=generator).tolist()
        validation += [pool[i] for i in order[:config.validation_sentences]]
        chosen = order[config.validation_sentences:share]
        train += [pool[i] for i in chosen] or [pool[order[-1]]]
        texts.append({"name": source.name, "sha256": source.sha256, "sentences": len(chosen) or 1})
    train = [train[i] for i in torch.randperm(len(train), generator=generator).tolist()]
    description = {"text": config.train_text, "texts": texts, "train_sentences": len(train),
                   "validation_sentences": len(validation), "seed": config.seed,
                   "rule": "sentences of the training text, none of the evaluated sentences; validation sentences "
                           "held out from training"}
    return TrainingData(train=train, validation=validation, description=description)


def training_data(kind: str, tokenizer, config: RecoveryConfig, eval_config: EvalConfig,
                  evaluated_sentences: list[str]) -> TrainingData:
    """Windows for a causal LM (``kind`` 'causal-lm'), sentences for an encoder."""
    if kind == "causal-lm":
        return training_windows(tokenizer, config, eval_config)
    return training_sentences(config, evaluated_sentences)
