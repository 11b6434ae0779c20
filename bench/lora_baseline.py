"""The alternative the bench measures straight-through training against: a LoRA adapter (``peft``)
on top of the frozen dequantized weights, trained by the same distillation loop, then merged and
re-quantized onto each layer's own grid (same scales, new codes), so it is stored as before."""
from __future__ import annotations

import time

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from memopt_core.compression.layers import QuantLinear
from memopt_core.compression.walk import set_module
from memopt_core.config import EvalConfig
from memopt_core.recovery.config import RecoveryConfig
from memopt_core.recovery.data import training_data
from memopt_core.recovery.distill import Distillation
from memopt_core.recovery.trainable import TrainableLinear, TrainableView, _open_norms

RANK = 16


class LoraView(TrainableView):
    """Quantized layers held as frozen dense dequantized Linears with a LoRA adapter; norms train too."""

    def __init__(self, model: nn.Module, names: list[str], train_norms: bool) -> None:
        self.sources = {n: model.get_submodule(n) for n in names}
        for name, source in self.sources.items():
            dense = nn.Linear(source.in_features, source.out_features, bias=False)
            dense.weight = nn.Parameter(source.dequantized_weight().float().clone(), requires_grad=False)
            set_module(model, name, dense)
        inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=names), model)
        super().__init__(model=model, layers={}, norms=_open_norms(model) if train_norms else {})

    def named_parameters(self) -> dict[str, nn.Parameter]:
        adapters = {n: p for n, p in self.model.named_parameters() if "lora_" in n}
        return {**adapters, **self.norms}

    @torch.no_grad()
    def export_(self) -> float:
        """Merge each adapter, put the merged weight back on the source grid; returns the share of codes changed."""
        changed = total = 0
        for name, source in self.sources.items():
            module = self.model.get_submodule(name)
            module.merge()
            merged = TrainableLinear(source, keep=None)
            merged.weight.copy_(module.get_base_layer().weight)
            stored: QuantLinear = merged.export()
            changed += int((stored.codes() != source.codes()).sum())
            total += source.codes().numel()
            set_module(self.model, name, stored)
        for param in self.norms.values():
            param.requires_grad_(False)
        return changed / total


def lora_recover(bench, compressed, recovery: RecoveryConfig, eval_config: EvalConfig, clock=time.perf_counter) -> dict:
    """Train a LoRA adapter on ``compressed`` (quantized; changed in place), merge, re-quantize."""
    data = training_data("causal-lm", bench.loaded.tokenizer, recovery, eval_config, [])
    view = LoraView(compressed.model, compressed.target_names, recovery.train_norms)
    loop = Distillation(view, bench.loaded.model, bench.loaded.tokenizer, "causal-lm", data, recovery, clock)
    with torch.enable_grad():
        for update in loop.run():
            if update.point is not None:
                print(f"    step {update.point.step:4d}  validation ppl {update.point.validation:9.2f} (adapter, dense)  "
                      f"{update.seconds:6.0f} CPU s", flush=True)
    loop.finish()
    summary = loop.summary()
    return {"adapter_perplexity": summary["best_validation"], "codes_changed": view.export_(), "summary": summary}
