"""Tiny random models built from configs (no network, no files), shared by tests."""
from __future__ import annotations

import torch


def make_tiny_llama(seed: int = 0, vocab_size: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=256,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def make_tiny_bert(seed: int = 0, vocab_size: int = 256):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        vocab_size=vocab_size, max_position_embeddings=128)
    return BertModel(config).eval()
