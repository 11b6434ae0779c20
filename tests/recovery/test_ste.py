"""The straight-through rounding's hand-written backward against autograd through the plain chain of
tensor ops it replaces (ragged groups, integer zero points, float minimums, per-tensor, kept masks)."""
import pytest
import torch

from memopt_core.recovery.ste import Grid, fake_quantize


def _chain(w, scale, zero, grid: Grid, keep=None):
    """The reference: the same rounding written as differentiable tensor ops (autograd's gradient)."""
    columns = torch.arange(w.shape[1]) // grid.group_size
    s = (scale.detach().half().float() + (scale - scale.detach()))[:, columns]
    if grid.zero_kind == "float":
        z = (zero.detach().half().float() + (zero - zero.detach()))[:, columns]
        raw = (w - z) / s
    else:
        z = zero.float()[:, columns] if grid.zero_kind == "int" else torch.full_like(s, 2.0 ** (grid.bits - 1))
        raw = w / s + z
    rounded = raw.detach().round()
    inside = (rounded >= 0) & (rounded <= grid.levels)
    soft = torch.where(inside, raw, raw.detach())
    codes = rounded.clamp(0, grid.levels) + (soft - soft.detach())
    value = codes * s + z if grid.zero_kind == "float" else (codes - z) * s
    return value if keep is None else torch.where(keep, value, torch.zeros(()))


@pytest.mark.parametrize("zero_kind, group_size, rows", [("symmetric", 4, 6), ("symmetric", 10, 1), ("int", 4, 6),
                                                         ("float", 4, 6), ("float", 3, 6), ("int", 10, 6)],
                         ids=["sym-ragged", "per-tensor", "int-ragged", "float-ragged", "float-g3", "int-channel"])
def test_backward_matches_autograd_through_the_chain(zero_kind, group_size, rows):
    torch.manual_seed(0)
    grid, w0 = Grid(bits=3, zero_kind=zero_kind, group_size=group_size), torch.randn(6, 10)
    n_groups = -(-10 // group_size)
    scale0 = torch.rand(rows, n_groups) * 0.3 + 0.2
    zero0 = {"symmetric": None, "int": torch.randint(0, 8, (rows, n_groups)).float(),
             "float": -torch.rand(rows, n_groups)}[zero_kind]
    upstream = torch.randn(6, 10)
    grads = []
    for function in (fake_quantize, _chain):
        w, scale = w0.clone().requires_grad_(True), scale0.clone().requires_grad_(True)
        zero = None if zero0 is None else zero0.clone().requires_grad_(zero_kind == "float")
        value = function(w, scale, zero, grid)
        (value * upstream).sum().backward()
        grads.append((value.detach(), w.grad, scale.grad, None if zero is None else zero.grad))
    (value, grad_w, grad_s, grad_z), (ref_value, ref_w, ref_s, ref_z) = grads
    assert torch.equal(value, ref_value)
    assert torch.allclose(grad_w, ref_w, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad_s, ref_s, rtol=1e-4, atol=1e-5)
    if zero_kind == "float":
        assert torch.allclose(grad_z, ref_z, rtol=1e-5, atol=1e-6)


def test_a_kept_mask_keeps_zeros_and_gives_kept_weights_their_gradient():
    torch.manual_seed(1)
    grid, keep = Grid(bits=3, zero_kind="symmetric", group_size=5), torch.rand(4, 10) > 0.5
    w = (torch.randn(4, 10) * 0.05 * keep).requires_grad_(True)  # small: many would round to 0
    scale = torch.full((4, 2), 0.25)
    value = torch.where(keep, fake_quantize(w, scale, None, grid, keep), torch.zeros(()))
    value.sum().backward()
    assert torch.equal(value != 0, keep)  # kept weights never decode to 0, pruned ones always do
    assert torch.equal(w.grad, keep.float())  # all inside the grid: the identity where kept, 0 where pruned
