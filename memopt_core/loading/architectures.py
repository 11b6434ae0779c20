"""Which kinds of model memopt handles, and the transformers Auto class that loads each."""
from __future__ import annotations

from typing import Any

from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from memopt_core.errors import UnsupportedModelError, choices

KINDS = ("causal-lm", "encoder", "sequence-classifier")
# Encoder-only families whose base model (``AutoModel``) memopt evaluates as a sentence encoder.
ENCODER_TYPES = frozenset({"bert", "roberta", "distilbert", "xlm-roberta", "albert", "electra", "mpnet",
                           "deberta", "deberta-v2", "camembert", "modernbert", "megatron-bert", "mobilebert"})
_ENCODER_HEADS = ("Model", "ForMaskedLM", "ForPreTraining")


def model_class(config: Any) -> tuple[str, type]:
    """(kind, transformers Auto class) for a config; UnsupportedModelError for other kinds."""
    architectures = list(getattr(config, "architectures", None) or [])
    model_type = getattr(config, "model_type", None)
    causal_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    for arch in architectures:
        if arch.endswith("ForCausalLM") or arch in causal_names:
            return "causal-lm", AutoModelForCausalLM
        if arch.endswith("ForSequenceClassification"):
            return "sequence-classifier", AutoModelForSequenceClassification
        if model_type in ENCODER_TYPES and arch.endswith(_ENCODER_HEADS):
            return "encoder", AutoModel
    if not architectures and model_type in ENCODER_TYPES:
        return "encoder", AutoModel
    named = "/".join(architectures) or "a config with no architecture"
    raise UnsupportedModelError(
        f"{named} (model type {model_type!r}) is not supported; memopt handles {choices(KINDS)} models: "
        f"*ForCausalLM, *ForSequenceClassification, or a base encoder ({', '.join(sorted(ENCODER_TYPES))})")
