"""Tiny models with a tiny byte-level BPE tokenizer, built in memory (no network, no files)."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from memopt_core.compression.compress import compress_copy
from memopt_core.config import ModelSpec, QuantConfig, RunConfig
from memopt_core.evaluation.causal_lm import evaluate_causal_lm
from memopt_core.export.service import ExportSource

ENDOFTEXT = "<|endoftext|>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with the 256 byte tokens, two merges and one special token (id 258)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["Ġt"] = len(vocab)
    vocab["he"] = len(vocab)
    bpe = models.BPE(vocab=vocab, merges=[("Ġ", "t"), ("h", "e")])
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=ENDOFTEXT, bos_token=ENDOFTEXT)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_llama(hidden: int = 64, seed: int = 0) -> LlamaForCausalLM:
    """A 2-block Llama (4 heads, 2 KV heads) whose vocabulary matches :func:`byte_tokenizer`."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=259, max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=258, eos_token_id=258, pad_token_id=258)
    return LlamaForCausalLM(config).eval()


def compressed(model, quant: QuantConfig | None):
    """memopt's compressed copy of ``model`` at ``quant`` (the original is not changed)."""
    config = RunConfig(ModelSpec("tiny-llama"), quant=quant)
    return compress_copy(model, config).model


def source(model, tokenizer, windows: torch.Tensor | None = None) -> ExportSource:
    """An export source for a compressed causal LM, with its own perplexity as memopt's figure."""
    memopt = {}
    if windows is not None:
        memopt["perplexity"] = evaluate_causal_lm(model, windows, kl_top_k=None)[0].perplexity
    return ExportSource(model, tokenizer, "causal-lm", "tiny", memopt, windows=windows)


def windows(n: int = 2, length: int = 32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 258, (n, length), generator=generator)
