"""How quality is measured."""
from __future__ import annotations

from dataclasses import dataclass

from memopt_core.config.checks import one_of, require, require_number
from memopt_core.config.choices import BUNDLED_TEXTS, COMPUTE_DTYPES

# Float32 elements of one slice of positions scored at a time (8 MiB). Log-softmax, the KL's
# exponentials and the reference's top-k each make a copy of what they are given: done on slices,
# those copies stay small. Kept here, not in the scorer, because the layer-by-layer planner counts
# the same slices.
SLICE_ELEMENTS = 1 << 21
# model_type of the causal LMs whose forward, read in transformers 5.24, is exactly
# ``logits = lm_head(base_model(...).last_hidden_state[:, kept])``: the scorer runs their head on one
# slice of positions at a time, so not even the model's own logits exist whole (others rescale or
# cap what the head returns, so they run their whole forward). Here for the planner too.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gpt2", "gpt_neox", "opt"})


@dataclass(frozen=True)
class EvalConfig:
    """How quality is measured. ``text`` is ``wikipedia``, ``news`` or a path to a UTF-8 file."""

    text: str = "wikipedia"
    seq_len: int = 512
    max_tokens: int = 4096
    seed: int = 0
    prompt: str = "The capital of France is"
    gen_tokens: int = 24
    kl_top_k: int | None = 64  # KL over the original's top-k tokens + a rest bucket; None = exact
    zero_shot: bool = True
    compute_dtype: str | None = None  # "compute in" for original and copy alike; None = as the weights are loaded

    def __post_init__(self) -> None:
        require(isinstance(self.text, str) and self.text.strip() != "", "evaluation text must be 'wikipedia', 'news' or a file path")
        require_number("sequence length", self.seq_len, int)
        require_number("max tokens", self.max_tokens, int)
        require(8 <= self.seq_len <= 32768, f"sequence length {self.seq_len} is out of range; choose 8 to 32768")
        require(self.max_tokens >= self.seq_len,
                 f"max tokens {self.max_tokens} is below the sequence length {self.seq_len}: no full window fits")
        require_number("generation tokens", self.gen_tokens, int)
        require(0 <= self.gen_tokens <= 512, f"generation tokens {self.gen_tokens} is out of range; choose 0 to 512")
        require(isinstance(self.prompt, str) and (self.gen_tokens == 0 or self.prompt.strip() != ""),
                 "the generation prompt is empty; give a prompt or set generation tokens to 0")
        if self.kl_top_k is not None:
            require(isinstance(self.kl_top_k, int) and self.kl_top_k > 0, f"kl_top_k {self.kl_top_k!r} must be a positive integer or None")
        if self.compute_dtype is not None:
            one_of("compute dtype", self.compute_dtype, COMPUTE_DTYPES)

    @property
    def text_is_bundled(self) -> bool:
        return self.text in BUNDLED_TEXTS
