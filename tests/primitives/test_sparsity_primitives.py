"""Pruning masks against torch.nn.utils.prune and hand-built references."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from memopt_core.errors import ConfigError
from memopt_core.primitives.sparsity import (count_zeros, global_magnitude_masks, l2_row_mask, magnitude_mask, nm_mask,
                                             sparsity, unstructured_mask_from_scores)

RATIOS = (0.0, 0.1, 0.25, 1 / 3, 0.5, 0.95)


def _weight(out: int = 40, inp: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ratio", RATIOS)
def test_magnitude_mask_equals_l1_unstructured(ratio):
    w = _weight()
    before = w.clone()
    expected = torch_prune.L1Unstructured(amount=ratio).compute_mask(w, torch.ones_like(w)).bool()
    keep = magnitude_mask(w, ratio)
    assert keep.dtype == torch.bool and keep.shape == w.shape
    assert torch.equal(keep, expected)
    assert int((~keep).sum()) == round(ratio * w.numel())
    assert torch.equal(w, before)  # pure: the argument is not changed


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 12), inp=st.integers(1, 12), ratio=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_magnitude_mask_equals_l1_unstructured_any_shape(out, inp, ratio, seed):
    w = _weight(out, inp, seed)
    expected = torch_prune.L1Unstructured(amount=ratio).compute_mask(w, torch.ones_like(w)).bool()
    assert torch.equal(magnitude_mask(w, ratio), expected)


def _torch_global_masks(shapes_and_scales, ratio):
    layers = []
    for i, ((out, inp), scale) in enumerate(shapes_and_scales):
        layer = nn.Linear(inp, out, bias=False)
        layer.weight = nn.Parameter(_weight(out, inp, seed=i) * scale)
        layers.append(layer)
    weights = {f"l{i}": layer.weight.detach().clone() for i, layer in enumerate(layers)}
    torch_prune.global_unstructured([(layer, "weight") for layer in layers],
                                    pruning_method=torch_prune.L1Unstructured, amount=ratio)
    return weights, {f"l{i}": layer.weight_mask.bool() for i, layer in enumerate(layers)}


@pytest.mark.parametrize("ratio", RATIOS)
def test_global_masks_equal_global_unstructured(ratio):
    # Different scales per layer, so one global threshold prunes the layers unevenly.
    weights, expected = _torch_global_masks([((16, 24), 1.0), ((32, 8), 0.3), ((8, 40), 2.0)], ratio)
    masks = global_magnitude_masks(weights, ratio)
    assert masks.keys() == expected.keys()
    for name in masks:
        assert masks[name].shape == weights[name].shape
        assert torch.equal(masks[name], expected[name]), name
    total = sum(w.numel() for w in weights.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(ratio * total)


@pytest.mark.parametrize("ratio", (0.2, 0.5, 0.77))
def test_global_masks_with_ties_remove_exact_count_of_smallest(ratio):
    # Values from a few levels (zeros included): the threshold falls inside a run of ties.
    gen = torch.Generator().manual_seed(3)
    weights = {name: torch.randint(-3, 4, shape, generator=gen).float() * 0.5
               for name, shape in (("a", (10, 12)), ("b", (7, 9)), ("c", (5, 20)))}
    masks = global_magnitude_masks(weights, ratio)
    removed = torch.cat([weights[n][~masks[n]].abs() for n in weights])
    kept = torch.cat([weights[n][masks[n]].abs() for n in weights])
    assert removed.numel() == round(ratio * sum(w.numel() for w in weights.values()))
    assert removed.max() <= kept.min()


def test_global_masks_accept_half_precision_and_keep_device_and_shape():
    weights = {"a": _weight(6, 10).to(torch.bfloat16), "b": _weight(4, 5, seed=1).to(torch.bfloat16)}
    masks = global_magnitude_masks(weights, 0.5)
    assert [m.shape for m in masks.values()] == [w.shape for w in weights.values()]
    assert sum(int((~m).sum()) for m in masks.values()) == 40


@pytest.mark.parametrize("ratio", RATIOS)
def test_l2_row_mask_equals_ln_structured(ratio):
    w = _weight(30, 20)
    expected = torch_prune.LnStructured(amount=ratio, n=2, dim=0).compute_mask(w, torch.ones_like(w)).bool()
    keep = l2_row_mask(w, ratio)
    assert torch.equal(keep, expected)
    rows_removed = (~keep).all(dim=1)
    assert int(rows_removed.sum()) == round(ratio * 30)
    assert torch.equal((~keep).any(dim=1), rows_removed)  # whole rows only


@pytest.mark.parametrize(("n", "m", "inp"), [(2, 4, 16), (4, 8, 24), (2, 4, 19), (4, 8, 30), (1, 4, 8)])
def test_nm_mask_keeps_n_largest_of_every_m(n, m, inp):
    scores = _weight(9, inp).abs()
    keep = nm_mask(scores, n, m)
    grouped = inp - inp % m
    for row in range(scores.shape[0]):
        for start in range(0, grouped, m):
            group, group_keep = scores[row, start:start + m], keep[row, start:start + m]
            assert int(group_keep.sum()) == n
            expected = sorted(range(m), key=lambda j: -float(group[j]))[:n]  # independent reference
            assert sorted(torch.nonzero(group_keep).flatten().tolist()) == sorted(expected)
    assert bool(keep[:, grouped:].all())  # trailing partial group stays dense
    assert int((~keep).sum()) == 9 * (grouped // m) * (m - n)


def test_nm_mask_on_weights_with_zeros_counts_nonzeros_exactly():
    w = _weight(8, 16) * (torch.arange(16) % 3 != 0)  # some exact zeros before pruning
    pruned = w * nm_mask(w.abs(), 2, 4)
    assert torch.equal((pruned.reshape(8, 4, 4) != 0).sum(-1), torch.full((8, 4), 2))


@pytest.mark.parametrize("ratio", (0.0, 0.25, 0.5, 0.95))
def test_unstructured_per_row_removes_ratio_in_every_row(ratio):
    scores = _weight(12, 40).abs()
    keep = unstructured_mask_from_scores(scores, ratio, per_row=True)
    k = round(ratio * 40)
    assert torch.equal((~keep).sum(dim=1), torch.full((12,), k))
    for row in range(12):  # reference: the k smallest scores of the row by sorting
        expected = set(torch.argsort(scores[row])[:k].tolist())
        assert set(torch.nonzero(~keep[row]).flatten().tolist()) == expected


def test_unstructured_whole_tensor_matches_magnitude_on_abs():
    w = _weight()
    assert torch.equal(unstructured_mask_from_scores(w.abs(), 0.4, per_row=False), magnitude_mask(w, 0.4))
    per_row = unstructured_mask_from_scores(w.abs(), 0.4, per_row=True)
    assert not torch.equal(per_row, magnitude_mask(w, 0.4))


def test_sparsity_counts_exact_zeros():
    t = torch.tensor([[0.0, 1.0, -0.0, 1e-30], [2.0, 0.0, float("nan"), 3.0]])
    assert count_zeros(t) == 3
    assert sparsity(t) == 3 / 8
    assert sparsity(torch.empty(0, 4)) == 0.0


@pytest.mark.parametrize("call", [
    lambda: magnitude_mask(torch.ones(2, 2), 1.5),
    lambda: global_magnitude_masks({"a": torch.ones(2, 2)}, -0.1),
    lambda: l2_row_mask(torch.ones(4), 0.5),
    lambda: nm_mask(torch.ones(2, 8), 5, 4),
    lambda: nm_mask(torch.ones(2, 8), 0, 4),
    lambda: unstructured_mask_from_scores(torch.ones(2, 2, 2), 0.5, per_row=True),
])
def test_bad_arguments_raise_one_line_config_error(call):
    with pytest.raises(ConfigError) as info:
        call()
    assert "\n" not in str(info.value)
