"""The prune walker and sparsity counting on tiny models built from configs."""
from __future__ import annotations

import copy
import hashlib
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from memopt_core.compression.prune import prune_
from memopt_core.compression.sparsity import layer_sparsity, overall_sparsity
from memopt_core.compression.walk import target_linears
from memopt_core.config import PruneConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.sparsity import nm_mask, unstructured_mask_from_scores


def _names(model: nn.Module) -> list[str]:
    return list(target_linears(model))


def _structural_copy(model: nn.Module) -> nn.Module:
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo=shared)


def _checksum(model: nn.Module) -> dict[str, str]:
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return {name: hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, t in tensors}


@pytest.mark.parametrize("ratio", (0.0, 0.25, 0.5, 0.95))
def test_magnitude_gives_the_exact_ratio_in_every_layer(tiny_llama, ratio):
    names = _names(tiny_llama)
    masks = prune_(tiny_llama, PruneConfig("magnitude", ratio), names)
    rows = layer_sparsity(tiny_llama, names)
    assert [row["name"] for row in rows] == names and masks.keys() == set(names)
    for row in rows:
        weight = tiny_llama.get_submodule(row["name"]).weight
        assert row["zeros"] == round(ratio * row["numel"]) == int((weight == 0).sum())
        assert row["sparsity"] == row["zeros"] / row["numel"]
        assert row["shape"] == tuple(weight.shape) and row["numel"] == weight.numel()
        assert torch.equal(masks[row["name"]], weight != 0)
    assert overall_sparsity(rows) == pytest.approx(ratio, abs=1e-3)


def test_layer_rows_name_block_and_module_type(tiny_llama):
    rows = layer_sparsity(tiny_llama, _names(tiny_llama))
    first = rows[0]
    assert (first["name"], first["block"], first["module_type"]) == ("model.layers.0.self_attn.q_proj", 0,
                                                                    "self_attn.q_proj")
    assert {row["block"] for row in rows} == {0, 1}
    assert all(row["sparsity"] == 0.0 for row in rows)  # random init has no exact zeros


def test_overall_sparsity_is_weighted_by_layer_size():
    rows = [{"zeros": 90, "numel": 100}, {"zeros": 0, "numel": 900}]
    assert overall_sparsity(rows) == 0.09  # a mean of ratios would say 0.45
    assert overall_sparsity([]) == 0.0


@pytest.mark.parametrize("cfg", [PruneConfig("magnitude", 0.5), PruneConfig("magnitude-global", 0.5),
                                 PruneConfig("l2-structured", 0.25), PruneConfig("magnitude", pattern="2:4")],
                         ids=lambda c: c.label)
def test_pruning_a_structural_copy_leaves_the_original_bit_identical(tiny_llama, cfg):
    before = _checksum(tiny_llama)
    pruned = _structural_copy(tiny_llama)
    names = _names(pruned)
    prune_(pruned, cfg, names)
    assert _checksum(tiny_llama) == before
    assert overall_sparsity(layer_sparsity(tiny_llama, names)) == 0.0
    assert overall_sparsity(layer_sparsity(pruned, names)) > 0.2
    # Untouched tensors are still shared, so the copy costs only the new weights.
    embed = pruned.get_submodule("model.embed_tokens").weight
    assert embed is tiny_llama.get_submodule("model.embed_tokens").weight
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(pruned(ids).logits, tiny_llama(ids).logits)


def test_ratio_zero_leaves_layers_untouched_and_shared(tiny_llama):
    pruned = _structural_copy(tiny_llama)
    names = _names(pruned)
    masks = prune_(pruned, PruneConfig("magnitude", 0.0), names)
    assert all(bool(m.all()) for m in masks.values())
    assert all(pruned.get_submodule(n).weight is tiny_llama.get_submodule(n).weight for n in names)


def test_global_threshold_gives_exact_overall_ratio_and_uneven_layers(tiny_llama):
    names = _names(tiny_llama)
    loud, quiet = names[0], names[-1]
    for name, scale in ((loud, 5.0), (quiet, 0.2)):  # new Parameters: make the layers' scales differ
        layer = tiny_llama.get_submodule(name)
        layer.weight = nn.Parameter(layer.weight.detach() * scale)
    reference = _structural_copy(tiny_llama)
    torch_prune.global_unstructured([(reference.get_submodule(n), "weight") for n in names],
                                    pruning_method=torch_prune.L1Unstructured, amount=0.5)
    masks = prune_(tiny_llama, PruneConfig("magnitude-global", 0.5), names)
    rows = {row["name"]: row for row in layer_sparsity(tiny_llama, names)}
    total = sum(row["numel"] for row in rows.values())
    assert sum(row["zeros"] for row in rows.values()) == round(0.5 * total)
    assert rows[loud]["sparsity"] < 0.1 and rows[quiet]["sparsity"] > 0.9
    for name in names:
        assert torch.equal(masks[name], reference.get_submodule(name).weight_mask.bool()), name


def test_l2_structured_removes_whole_rows(tiny_llama):
    names = _names(tiny_llama)
    prune_(tiny_llama, PruneConfig("l2-structured", 0.25), names)
    for name in names:
        weight = tiny_llama.get_submodule(name).weight
        zero_rows = (weight == 0).all(dim=1)
        assert int(zero_rows.sum()) == round(0.25 * weight.shape[0])
        assert torch.equal((weight == 0).any(dim=1), zero_rows)


@pytest.mark.parametrize(("pattern", "n", "m"), [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_pattern_keeps_n_of_every_m(tiny_llama, pattern, n, m):
    names = _names(tiny_llama)
    prune_(tiny_llama, PruneConfig("magnitude", pattern=pattern), names)
    for row in layer_sparsity(tiny_llama, names):
        weight = tiny_llama.get_submodule(row["name"]).weight
        groups = weight.reshape(weight.shape[0], -1, m)
        assert bool(((groups != 0).sum(-1) == n).all())
        assert row["sparsity"] == 1 - n / m


def test_wanda_uses_scores_within_each_row(tiny_llama):
    names = _names(tiny_llama)
    gen = torch.Generator().manual_seed(1)
    weights = {n: tiny_llama.get_submodule(n).weight.detach().clone() for n in names}
    # Wanda's importance: |w| times the norm of each input feature over calibration tokens.
    sq_norms = {n: torch.rand(w.shape[1], generator=gen) for n, w in weights.items()}
    scores = {n: w.abs() * sq_norms[n].sqrt() for n, w in weights.items()}
    masks = prune_(tiny_llama, PruneConfig("wanda", 0.5), names, input_sq_norms=sq_norms)
    for name in names:
        weight = tiny_llama.get_submodule(name).weight
        expected = unstructured_mask_from_scores(scores[name], 0.5, per_row=True)
        assert torch.equal(masks[name], expected)
        assert torch.equal(weight, weights[name] * expected)
        assert torch.equal((weight == 0).sum(dim=1), torch.full((weight.shape[0],), weight.shape[1] // 2))
        assert not torch.equal(expected, weights[name].abs() >= weights[name].abs().median())


def test_wanda_nm_pattern_uses_scores(tiny_llama):
    names = _names(tiny_llama)[:2]
    gen = torch.Generator().manual_seed(2)
    sq_norms = {n: torch.rand(tiny_llama.get_submodule(n).in_features, generator=gen) for n in names}
    weights = {n: tiny_llama.get_submodule(n).weight.detach().clone() for n in names}
    masks = prune_(tiny_llama, PruneConfig("wanda", pattern="2:4"), names, input_sq_norms=sq_norms)
    for name in names:
        assert torch.equal(masks[name], nm_mask(weights[name].abs() * sq_norms[name].sqrt(), 2, 4))


@pytest.mark.parametrize(("cfg", "scores", "words"), [
    (PruneConfig("wanda", 0.5), None, "calibration"),
    (PruneConfig("sparsegpt", 0.5), None, "memopt_core.compression.calibrate"),
    (PruneConfig("magnitude", 0.5), {}, "wanda only"),
    (PruneConfig("wanda", 0.5), {}, "missing"),
    (PruneConfig("wanda", 0.5), "wrong-shape", "shape"),
])
def test_bad_requests_raise_before_changing_anything(tiny_llama, cfg, scores, words):
    names = _names(tiny_llama)
    if scores == "wrong-shape":
        scores = {n: torch.ones(3) for n in names}
    before = _checksum(tiny_llama)
    with pytest.raises(ConfigError, match=words) as info:
        prune_(tiny_llama, cfg, names, input_sq_norms=scores)
    assert "\n" not in str(info.value)
    assert _checksum(tiny_llama) == before


def test_works_on_bert(tiny_bert):
    names = _names(tiny_bert)
    prune_(tiny_bert, PruneConfig("magnitude", 0.5), names)
    rows = layer_sparsity(tiny_bert, names)
    assert len(rows) == 12 and all(row["zeros"] == row["numel"] // 2 for row in rows)
    assert rows[0]["module_type"] == "attention.self.query"


class _FakeQuantLinear(nn.Linear):
    """A compressed layer stand-in: it computes with a rounded copy of its weight."""

    def dequantized_weight(self) -> torch.Tensor:
        return torch.round(self.weight * 4) / 4


def _fake_quant(seed: int = 0) -> _FakeQuantLinear:
    torch.manual_seed(seed)
    layer = _FakeQuantLinear(16, 8)
    layer.weight = nn.Parameter(torch.randn(8, 16))
    return layer


def test_counts_come_from_the_effective_weight():
    model = nn.Sequential(_fake_quant())
    effective = model[0].dequantized_weight()
    rows = layer_sparsity(model, ["0"])
    assert int((model[0].weight == 0).sum()) == 0  # the stored float weight has no zeros ...
    assert rows[0]["zeros"] == int((effective == 0).sum()) > 0  # ... the weight it computes with does


def test_compressed_layer_is_pruned_on_its_effective_weight():
    model = nn.Sequential(_fake_quant())
    layer = model[0]
    effective, weight_before = layer.dequantized_weight(), layer.weight.detach().clone()
    masks = prune_(model, PruneConfig("magnitude", 0.75), ["0"])
    assert type(model[0]) is nn.Linear  # no masked twin offered: a dense Linear replaces it
    assert torch.equal(model[0].weight, effective * masks["0"])
    assert int((~masks["0"]).sum()) == 96
    assert model[0].bias is layer.bias
    assert torch.equal(layer.weight, weight_before)


def test_compressed_layer_can_offer_its_own_masked_twin():
    class WithMaskHook(_FakeQuantLinear):
        def masked(self, keep: torch.Tensor) -> nn.Module:
            twin = WithMaskHook(16, 8)
            twin.weight = nn.Parameter(self.weight.detach() * keep)
            return twin

    model = nn.Sequential(WithMaskHook(16, 8))
    masks = prune_(model, PruneConfig("magnitude", 0.5), ["0"])
    assert isinstance(model[0], WithMaskHook)
    assert int((model[0].weight == 0).sum()) == int((~masks["0"]).sum()) == 64
