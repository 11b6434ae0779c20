"""The tokenizer inside a GGUF file (``tokenizer.ggml.*``), from a transformers fast tokenizer.

GGUF describes byte-level BPE vocabularies (``tokenizer.ggml.model = gpt2``: tokens, token
types, merges, special ids) as llama.cpp's own converter writes them. llama.cpp picks its text
splitting from ``tokenizer.ggml.pre``: SmolLM2's vocabulary is recognised by its hash (``smollm``),
a plain GPT-2 byte-level splitter is ``gpt-2``; any other is written as ``default`` and said so.
"""
from __future__ import annotations

import hashlib
import json

import gguf

from memopt_core.errors import UnsupportedModelError

# sha256 of the tokens joined by newlines, in id order -> llama.cpp's pre-tokenizer name.
KNOWN_VOCABULARIES = {"d1f2ce856b324081b621d9e2e8dbd22879f462329f3fd4aa39fa758dddb2ce55": "smollm"}


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedModelError(f"{type(tokenizer).__name__} is not a fast tokenizer: GGUF export needs its "
                                    "tokenizer.json (byte-level BPE)")
    return json.loads(backend.to_str())


def _tokens(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Tokens in id order padded to ``n_vocab`` (the embedding rows), with GGUF token types."""
    vocab = tokenizer.get_vocab()
    size = max(n_vocab, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for text, index in vocab.items():
        tokens[index], types[index] = text, int(gguf.TokenType.NORMAL)
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = int(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
    return tokens, types


def _pre_tokenizer(tokens: list[str], spec: dict) -> tuple[str, list[str]]:
    digest = hashlib.sha256("\n".join(tokens).encode()).hexdigest()
    if digest in KNOWN_VOCABULARIES:
        return KNOWN_VOCABULARIES[digest], []
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2", []
    return "default", ["tokenizer.ggml.pre written as 'default': llama.cpp may split text differently "
                       "from transformers for this vocabulary"]


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, n_vocab: int) -> list[str]:
    """Write ``tokenizer`` into ``writer`` (changed in place). Returns notes for the report."""
    spec = _backend_json(tokenizer)
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise UnsupportedModelError(f"GGUF export writes byte-level BPE tokenizers (as SmolLM2's); this one is "
                                    f"{model.get('type')} with a {decoder.get('type')} decoder")
    tokens, types = _tokens(tokenizer, n_vocab)
    pre, notes = _pre_tokenizer(tokens, spec)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(_adds_bos(tokenizer))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)
    return notes
