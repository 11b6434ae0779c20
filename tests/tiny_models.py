"""Tiny random models built from configs (no network, no files), shared by tests."""
from __future__ import annotations

import copy

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


def perturbed_copy(model, scale: float = 0.05, seed: int = 1):
    """A deep copy whose 2-D block weights get ``scale`` x N(0, 1) noise: a stand-in for a compressed copy."""
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in other.named_parameters():
            if "layers." in name and param.dim() == 2:
                param.add_(scale * torch.randn_like(param))
    return other


def greedy_windows(model, n_windows: int, random_tokens: int, greedy_tokens: int = 12, vocab_size: int = 256,
                   seed: int = 2) -> torch.Tensor:
    """[n_windows, random_tokens + greedy_tokens] token ids: random ones, then the model's greedy
    continuation, so the text is partly predictable (top-1 accuracy far from 0)."""
    torch.manual_seed(seed)
    prefix = torch.randint(2, vocab_size, (n_windows, random_tokens))
    with torch.inference_mode():
        return model.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=greedy_tokens,
                              min_new_tokens=greedy_tokens, do_sample=False, pad_token_id=0)
