"""The training view of compressed layers: same function when opened, same storage when exported,
zeros kept, codes on the grid; the straight-through estimator checked against torch's own."""
import pytest
import torch
from torch import nn

from memopt_core.compression.compress import compress_copy
from memopt_core.compression.layers import CastLinear, QuantLinear, SparseLinear, module_storage_bytes
from memopt_core.compression.walk import effective_weight
from memopt_core.config import ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.loading.models import weights_checksum
from memopt_core.recovery.ste import Grid, grid_codes
from memopt_core.recovery.trainable import TrainableLinear, open_for_training_

G16 = dict(granularity="group", group_size=16)
SETTINGS = {
    "magnitude 50%": (PruneConfig(ratio=0.5), None, SparseLinear),
    "magnitude 10% (held dense)": (PruneConfig(ratio=0.1), None, SparseLinear),
    "l2-structured 25%": (PruneConfig(method="l2-structured", ratio=0.25), None, SparseLinear),
    "W3 g16 sym": (None, QuantConfig(bits=3, **G16), QuantLinear),
    "W4 per-channel asym": (None, QuantConfig(bits=4, symmetric=False), QuantLinear),
    "W4 per-tensor": (None, QuantConfig(bits=4, granularity="per-tensor"), QuantLinear),
    "magnitude 50% + W3 g16": (PruneConfig(ratio=0.5), QuantConfig(bits=3, **G16), QuantLinear),
    "magnitude 50% + W4 g16 float minimum": (PruneConfig(ratio=0.5),
                                             QuantConfig(bits=4, symmetric=False, zero_point="float", **G16),
                                             QuantLinear),
    "fp16": (None, QuantConfig(method="fp16"), CastLinear),
}


@pytest.fixture
def tiny_llama(tiny_llama):
    return tiny_llama.requires_grad_(False)  # as memopt loads every model


def _compressed(model, prune, quant):
    return compress_copy(model, RunConfig(ModelSpec("tiny-llama"), prune=prune, quant=quant))


def _train(model, view, steps=6, lr=5e-3):
    params = [p for group in view.parameter_groups(lr, 1.0) for p in group["params"]]
    optimizer = torch.optim.Adam(params, lr=lr)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        loss = model(input_ids=ids).logits.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return ids


@pytest.mark.parametrize("name", list(SETTINGS))
def test_open_train_export_keeps_storage_zeros_and_function(tiny_llama, name):
    prune, quant, _ = SETTINGS[name]
    original_sum = weights_checksum(tiny_llama)
    compressed = _compressed(tiny_llama, prune, quant)
    model, names = compressed.model, compressed.target_names
    classes = {n: type(model.get_submodule(n)) for n in names}
    before = {n: effective_weight(model.get_submodule(n)).clone() for n in names}
    bytes_before = module_storage_bytes(model)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        out_compressed = model(input_ids=ids).logits
    view = open_for_training_(model, names, freeze_zeros=prune is not None, train_norms=True)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, out_compressed)  # opening changes nothing
    _train(model, view)
    with torch.no_grad():
        out_trained = model(input_ids=ids).logits
    view.export_()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, out_trained)  # export computes what was trained
    after = {n: effective_weight(model.get_submodule(n)) for n in names}
    assert {n: type(model.get_submodule(n)) for n in names} == classes
    assert module_storage_bytes(model) == bytes_before
    assert sum(int((before[n] != after[n]).sum()) for n in names) > 0  # training did change weights
    if prune is not None:  # the zero pattern is frozen: zeros stay zero, no new zero appears
        assert all(torch.equal(before[n] == 0, after[n] == 0) for n in names)
    assert not any(p.requires_grad for p in model.parameters())
    assert weights_checksum(tiny_llama) == original_sum  # the original is untouched


@pytest.mark.parametrize("quant", [QuantConfig(bits=3, **G16), QuantConfig(bits=4, symmetric=False, **G16),
                                   QuantConfig(bits=4, symmetric=False, zero_point="float", **G16)],
                         ids=["sym", "int-zero", "float-min"])
def test_recovered_codes_stay_on_the_grid(tiny_llama, quant):
    compressed = _compressed(tiny_llama, None, quant)
    view = open_for_training_(compressed.model, compressed.target_names, freeze_zeros=False, train_norms=False)
    opened = {n: layer for n, layer in view.layers.items()}
    _train(compressed.model, view, steps=4, lr=2e-2)
    view.export_()
    for name in compressed.target_names:
        module = compressed.model.get_submodule(name)
        codes = module.codes().long()  # [out, in]
        assert int(codes.max()) < 2 ** quant.bits and int(codes.min()) >= 0
        scale = module.scale.float().repeat_interleave(16, dim=1)  # [out, in]
        if module.zero_kind == "symmetric":
            expected = (codes.float() - 2 ** (quant.bits - 1)) * scale
        elif module.zero_kind == "int":
            expected = (codes.float() - module.zero.float().repeat_interleave(16, dim=1)) * scale
        else:
            expected = codes.float() * scale + module.zero.float().repeat_interleave(16, dim=1)
        assert torch.equal(module.dequantized_weight(), expected)  # every weight is a grid level
        assert module.scale.shape == opened[name].scale.shape and module.scale.dtype == torch.float16


def test_codes_at_opening_are_the_stored_codes(tiny_llama):
    compressed = _compressed(tiny_llama, None, QuantConfig(bits=3, symmetric=False, **G16))
    stored = {n: compressed.model.get_submodule(n).codes().float() for n in compressed.target_names}
    view = open_for_training_(compressed.model, compressed.target_names, freeze_zeros=False, train_norms=False)
    for name, layer in view.layers.items():
        codes = grid_codes(layer.weight, layer.scale, layer.zero, layer.grid)[0]
        assert torch.equal(codes.reshape(stored[name].shape), stored[name])


@pytest.mark.parametrize("name", ["W3 g16 sym", "W4 per-channel asym", "magnitude 50% + W4 g16 float minimum", "fp16"])
def test_latent_weights_start_from_the_original_with_the_same_function(tiny_llama, name):
    prune, quant, _ = SETTINGS[name]
    compressed = _compressed(tiny_llama, prune, quant)
    model, names = compressed.model, compressed.target_names
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        out_compressed = model(input_ids=ids).logits
    view = open_for_training_(model, names, freeze_zeros=prune is not None, train_norms=False, original=tiny_llama)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, out_compressed)  # the same function
    for n, layer in view.layers.items():
        original = effective_weight(tiny_llama.get_submodule(n)).float()
        kept = layer.keep if layer.keep is not None else torch.ones_like(original, dtype=torch.bool)
        # RTN rounds the original onto the stored grid: every kept latent weight is the original's
        assert torch.equal(layer.weight[kept], original[kept])


def test_latent_weights_stay_stored_where_the_original_rounds_elsewhere():
    torch.manual_seed(0)
    weight = torch.randn(6, 10) * 0.3
    scale = (weight.abs().amax(1, keepdim=True) / 3).half().float()  # [6, 1], fp16-exact
    layer = _symmetric_layer(weight, scale, bits=3)
    stored = layer.effective().detach().clone()  # the stored codes decoded, [6, 10]
    layer.weight.data.copy_(stored)  # opened as a stored layer is: the latent on its grid level
    original = weight + torch.where(torch.arange(10) < 3, scale, torch.zeros_like(scale))  # 3 columns a step off
    moved = layer.start_from_(original)
    agrees = (original / scale).round().clamp(-4, 3) == (stored / scale).round()
    assert 0 < moved < 1 and moved == pytest.approx(agrees.float().mean().item())
    assert torch.equal(layer.weight, torch.where(agrees, original, stored))
    assert torch.equal(layer.effective().detach(), stored)  # the forward is unchanged


def _symmetric_layer(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> TrainableLinear:
    """A per-channel symmetric QuantLinear over ``weight`` with the given fp16-exact ``scale [out, 1]``."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = nn.Parameter(weight.clone(), requires_grad=False)
    module = QuantLinear.from_linear(linear, QuantConfig(bits=bits))
    module.scale = scale.half()
    layer = TrainableLinear(module, keep=None)
    layer.weight.data.copy_(weight)  # a latent weight off the grid
    return layer


def test_straight_through_matches_torch_fake_quantize_and_its_learnable_scale():
    torch.manual_seed(0)
    bits, weight = 3, torch.randn(6, 10) * 0.3
    scale = (weight.abs().amax(1, keepdim=True) / 3 * 0.8).half().float()  # fp16-exact; some weights beyond the grid
    layer = _symmetric_layer(weight, scale, bits)
    upstream = torch.randn(6, 10)
    (layer.effective() * upstream).sum().backward()

    x = weight.clone().requires_grad_(True)
    s = scale[:, 0].clone().requires_grad_(True)
    zero_point = torch.zeros(6)  # symmetric codes -4..3 around 0 are torch's quant_min..quant_max
    reference = torch._fake_quantize_learnable_per_channel_affine(x, s, zero_point, 0, -4, 3, 1.0)
    (reference * upstream).sum().backward()
    assert torch.equal(layer.effective().detach(), reference.detach())
    assert torch.equal(layer.weight.grad == 0, x.grad == 0)  # zero outside the grid ...
    assert torch.allclose(layer.weight.grad, x.grad, rtol=1e-6, atol=0)  # ... the identity inside
    assert torch.allclose(layer.scale.grad[:, 0], s.grad, rtol=1e-5, atol=1e-6)  # LSQ gradient
    plain = torch.fake_quantize_per_channel_affine(weight, scale[:, 0], zero_point.int(), 0, -4, 3)
    assert torch.equal(layer.effective().detach(), plain)


def test_hand_worked_float_minimum_grid_and_kept_weight_off_zero():
    # one group of 4: minimum -0.5, scale 0.25 (fp16-exact), 2 bits -> levels -0.5, -0.25, 0, 0.25
    grid = Grid(bits=2, zero_kind="float", group_size=4)
    w = torch.tensor([[-0.6, -0.2, 0.05, 0.2]])
    scale, minimum = torch.tensor([[0.25]]), torch.tensor([[-0.5]])
    codes = grid_codes(w, scale, minimum, grid)[0].reshape(1, 4)
    assert codes.tolist() == [[0.0, 1.0, 2.0, 3.0]]  # -0.6 clamps to the minimum; 0.05 rounds to level 0.0
    keep = torch.tensor([[True, True, True, False]])
    codes = grid_codes(w, scale, minimum, grid, keep)[0].reshape(1, 4)
    assert codes.tolist() == [[0.0, 1.0, 3.0, 3.0]]  # the kept 0.05 may not decode to 0: it moves up
