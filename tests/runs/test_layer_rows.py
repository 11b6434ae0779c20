"""Each targeted layer's row on the page: sparsity counted and SQNR measured from the weights, each
weight rebuilt once."""
from __future__ import annotations

import torch

from memopt_core.compression import compress
from memopt_core.compression.walk import effective_weight
from memopt_core.config import ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.loading.models import load_model
from memopt_core.runs.workbench import Workbench


def sqnr(original: torch.Tensor, rebuilt: torch.Tensor) -> float:
    """10 log10(signal power / noise power), in float64 from the weights themselves."""
    original, rebuilt = original.double(), rebuilt.double()
    return (10 * torch.log10(original.pow(2).sum() / (original - rebuilt).pow(2).sum())).item()


def test_layer_rows_count_and_measure_every_layer_from_one_rebuild(monkeypatch):
    bench = Workbench(load_model(ModelSpec("tiny-llama")))
    config = RunConfig(ModelSpec("tiny-llama"), prune=PruneConfig(ratio=0.3), quant=QuantConfig(bits=5))
    compressed, memory = bench.compress(config)
    rebuilds = []
    counting = effective_weight
    monkeypatch.setattr(compress, "effective_weight", lambda module: rebuilds.append(module) or counting(module))
    rows = bench.layer_rows(compressed, memory)
    assert [row["name"] for row in rows] == compressed.target_names
    assert len(rebuilds) == 2 * len(rows)  # each compressed weight once, each original once
    for row in rows:
        original = effective_weight(bench.loaded.model.get_submodule(row["name"]))
        rebuilt = effective_weight(compressed.model.get_submodule(row["name"]))
        assert row["zeros"] == int((rebuilt == 0).sum()) and row["numel"] == rebuilt.numel()
        assert abs(row["sparsity"] - 0.3) < 0.05  # magnitude pruning's 30%, and weights that round to zero
        assert abs(row["sqnr_db"] - sqnr(original, rebuilt)) < 1e-3
