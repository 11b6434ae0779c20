"""Shared fixtures: tiny random models built from configs (no network, no files)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Tests never write to the user's cache unless they point MEMOPT_CACHE elsewhere themselves.

    The bundled SmolLM2 conversion is shared across tests through a session-wide folder."""
    shared = os.environ.get("MEMOPT_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "memopt-cache")
    monkeypatch.setenv("MEMOPT_CACHE", shared)
