"""The bench's LoRA alternative (peft): merged into the dequantized weight, back on the same grid."""
import torch

from bench.lora_baseline import LoraView
from memopt_core.compression.compress import compress_copy
from memopt_core.compression.layers import QuantLinear, module_storage_bytes
from memopt_core.config import ModelSpec, QuantConfig, RunConfig


def test_merged_adapter_is_requantized_onto_the_same_grid(tiny_llama):
    tiny_llama.requires_grad_(False)
    quant = QuantConfig(bits=3, granularity="group", group_size=16)
    compressed = compress_copy(tiny_llama, RunConfig(ModelSpec("tiny-llama"), quant=quant))
    sources = {n: compressed.model.get_submodule(n) for n in compressed.target_names}
    stored_bytes = module_storage_bytes(compressed.model)
    view = LoraView(compressed.model, compressed.target_names, train_norms=False)
    assert view.named_parameters() and all("lora_" in n for n in view.named_parameters())
    with torch.no_grad():  # an adapter update of about a quantization step
        for name, param in view.named_parameters().items():
            param.normal_(0, 0.3)
    name = compressed.target_names[0]
    lora_layer = compressed.model.get_submodule(name)
    expected = sources[name].dequantized_weight() + lora_layer.get_delta_weight("default")  # peft's own delta
    changed = view.export_()
    layer = compressed.model.get_submodule(name)
    assert isinstance(layer, QuantLinear) and torch.equal(layer.scale, sources[name].scale)
    assert module_storage_bytes(compressed.model) == stored_bytes
    assert 0.0 < changed < 1.0
    step = layer.scale.float().repeat_interleave(16, dim=1)  # [out, in]
    codes = layer.codes().reshape(expected.shape)
    inside = (codes > 0) & (codes < 7)  # not clamped at an end of the 3-bit grid
    error = (layer.dequantized_weight() - expected).abs()
    assert bool((error[inside] <= step[inside] / 2 + 1e-6).all())  # rounded to the nearest level
