"""Compressed Linear modules: what they store, what they compute, how they reload."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from memopt_core.compression.layers import (CastLinear, QuantLinear, SparseLinear, from_spec, module_storage_bytes,
                                            weight_storage_bytes)
from memopt_core.config import QuantConfig
from memopt_core.primitives.packing import unpack_mask
from memopt_core.primitives.quant import dequantize, quantize_weight

G128_ASYM = QuantConfig(bits=4, granularity="group", group_size=128, symmetric=False)
FLOAT_MIN = QuantConfig(bits=4, symmetric=False, zero_point="float")


def make_linear(in_f=200, out_f=24, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias)


def pruned(linear: nn.Linear, every: int = 2) -> nn.Linear:
    """A copy of ``linear`` with every ``every``-th weight set to zero."""
    out = make_linear(linear.in_features, linear.out_features, linear.bias is not None)
    w = linear.weight.detach().clone()
    w.view(-1)[::every] = 0.0
    out.weight = nn.Parameter(w)
    if linear.bias is not None:
        out.bias = nn.Parameter(linear.bias.detach().clone())
    return out


def state_nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


@pytest.mark.parametrize("cfg", [QuantConfig(bits=4), G128_ASYM, FLOAT_MIN, QuantConfig(bits=3, granularity="group",
                                 group_size=64), QuantConfig(bits=8, granularity="per-tensor")], ids=lambda c: c.label)
def test_quant_linear_computes_with_the_dequantized_weight(cfg):
    linear = make_linear()
    q = QuantLinear.from_linear(linear, cfg)
    reference = dequantize(quantize_weight(linear.weight, cfg))  # [out, in]
    assert torch.equal(q.dequantized_weight(), reference)
    assert torch.equal(q.codes(), quantize_weight(linear.weight, cfg).codes)
    x = torch.randn(3, 5, 200)
    assert torch.equal(q(x), F.linear(x, reference, linear.bias))


def test_casting_the_model_keeps_fp16_scales():
    q = QuantLinear.from_linear(make_linear(), G128_ASYM)
    before = q.dequantized_weight()
    q.to(torch.bfloat16)  # fp16 -> bf16 would round the scales: they must stay fp16
    assert q.scale.dtype == q.zero.dtype == torch.float16 and q.bias.dtype == torch.bfloat16
    assert q.weight_dtype == torch.bfloat16 and q.dequantized_weight().dtype == torch.bfloat16
    assert torch.equal(q.dequantized_weight(torch.float32), before)
    assert q(torch.randn(2, 200, dtype=torch.bfloat16)).dtype == torch.bfloat16
    cast = CastLinear.from_linear(make_linear(), torch.float16).float()
    assert cast.weight.dtype == torch.float16 and cast.bias.dtype == torch.float32


def test_quant_linear_holds_only_packed_codes_and_small_parameters():
    linear = make_linear(256, 64)
    q = QuantLinear.from_linear(linear, G128_ASYM)
    state = q.state_dict()
    assert set(state) == {"packed", "scale", "zero", "bias"}
    assert state["packed"].dtype == torch.uint8 and state["packed"].numel() == 64 * 256 // 2
    assert state["scale"].dtype == state["zero"].dtype == torch.float16 and state["scale"].shape == (64, 2)
    assert not any(t.is_floating_point() and t.numel() >= 64 * 256 for t in state.values())  # no dense copy
    assert q.bias.data_ptr() != linear.bias.data_ptr() and torch.equal(q.bias, linear.bias)
    assert (q.in_features, q.out_features, q.weight_shape) == (256, 64, (64, 256))
    assert "zero" not in QuantLinear.from_linear(linear, QuantConfig(bits=4)).state_dict()


def test_symmetric_keeps_pruned_zeros_without_a_mask():
    source = pruned(make_linear())
    q = QuantLinear.from_linear(source, QuantConfig(bits=4))
    assert q.mask is None
    assert torch.all(q.dequantized_weight().view(-1)[::2] == 0)


def test_float_minimum_stores_a_mask_to_keep_pruned_zeros():
    source = pruned(make_linear())
    plain = quantize_weight(source.weight, FLOAT_MIN)
    assert torch.any(dequantize(plain).view(-1)[::2] != 0)  # the grid misses zero: a mask is needed
    q = QuantLinear.from_linear(source, FLOAT_MIN)
    assert q.mask is not None and torch.equal(unpack_mask(q.mask, source.weight.numel()), source.weight.view(-1) != 0)
    w = q.dequantized_weight()
    assert torch.all(w.view(-1)[::2] == 0)
    kept = source.weight != 0
    assert torch.equal(w[kept], dequantize(plain)[kept])
    assert QuantLinear.from_linear(make_linear(), FLOAT_MIN).mask is None  # no zeros, no mask


def test_quant_linear_accepts_a_sparse_source():
    source = pruned(make_linear())
    from_sparse = QuantLinear.from_linear(SparseLinear.from_linear(source), G128_ASYM)
    from_dense = QuantLinear.from_linear(source, G128_ASYM)
    assert torch.equal(from_sparse.dequantized_weight(), from_dense.dequantized_weight())


def test_sparse_linear_is_exact_and_stores_the_non_zeros():
    source = pruned(make_linear(), every=3)
    sparse = SparseLinear.from_linear(source)
    nnz = int((source.weight != 0).sum())
    assert sparse.values.numel() == nnz and sparse.values.dtype == torch.float32
    assert torch.equal(sparse.dequantized_weight(), source.weight)
    x = torch.randn(4, 200)
    assert torch.equal(sparse(x), source(x))
    assert module_storage_bytes(sparse) == nnz * 4 + 24 * 200 // 8 + 24 * 4


def test_sparse_is_smaller_boundary():
    # fp32 [64, 64]: dense 16384 bytes, bitmask 512 bytes, so smaller while nnz * 4 + 512 < 16384.
    w = torch.ones(64, 64)
    w.view(-1)[:129] = 0.0  # 3967 non-zeros: 15868 + 512 < 16384
    assert SparseLinear.is_smaller(w)
    w.view(-1)[128] = 1.0  # 3968 non-zeros: equal bytes, not smaller
    assert int(w.count_nonzero()) == 3968 and not SparseLinear.is_smaller(w)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cast_linear(dtype):
    linear = make_linear()
    cast = CastLinear.from_linear(linear, dtype)
    assert cast.weight.dtype == dtype and torch.equal(cast.weight, linear.weight.to(dtype))
    x = torch.randn(2, 200)
    assert torch.equal(cast(x), F.linear(x, linear.weight.to(dtype).float(), linear.bias))
    assert weight_storage_bytes(cast) == 24 * 200 * 2


def test_cast_linear_copies_even_when_the_dtype_matches():
    half = make_linear().half()
    cast = CastLinear.from_linear(half, torch.float16)
    assert cast.weight.data_ptr() != half.weight.data_ptr()
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        CastLinear.from_linear(half, torch.float32)


@pytest.mark.parametrize("build", [
    lambda lin: QuantLinear.from_linear(lin, G128_ASYM),
    lambda lin: QuantLinear.from_linear(pruned(lin), FLOAT_MIN),
    lambda lin: QuantLinear.from_linear(lin, QuantConfig(bits=3, granularity="per-tensor")),
    lambda lin: SparseLinear.from_linear(pruned(lin)),
    lambda lin: CastLinear.from_linear(lin, torch.bfloat16),
], ids=["quant", "quant-mask", "quant-per-tensor", "sparse", "cast"])
@pytest.mark.parametrize("bias", [True, False])
def test_rebuild_from_spec_and_safetensors(build, bias, tmp_path):
    module = build(make_linear(bias=bias))
    spec = json.loads(json.dumps(module.spec()))
    save_file(module.state_dict(), str(tmp_path / "layer.safetensors"))
    rebuilt = from_spec(spec)
    rebuilt.load_state_dict(load_file(str(tmp_path / "layer.safetensors")), strict=True)
    assert type(rebuilt) is type(module) and rebuilt.spec() == module.spec()
    assert torch.equal(rebuilt.dequantized_weight(), module.dequantized_weight())
    x = torch.randn(3, 200)
    assert torch.equal(rebuilt(x), module(x))


def test_unknown_spec_class_is_rejected():
    with pytest.raises(ValueError, match="QuantLinear"):
        from_spec({"class": "Conv2d"})


@pytest.mark.parametrize("build", [
    lambda lin: QuantLinear.from_linear(lin, G128_ASYM),
    lambda lin: QuantLinear.from_linear(pruned(lin), FLOAT_MIN),
    lambda lin: SparseLinear.from_linear(pruned(lin)),
    lambda lin: CastLinear.from_linear(lin, torch.float16),
    lambda lin: lin,
], ids=["quant", "quant-mask", "sparse", "cast", "linear"])
def test_storage_bytes_equal_the_held_tensors(build):
    module = build(make_linear())
    assert module_storage_bytes(module) == state_nbytes(module)
    assert weight_storage_bytes(module) == state_nbytes(module) - module.bias.numel() * module.bias.element_size()


def test_storage_bytes_count_shared_memory_once():
    first = make_linear(16, 16)
    tied = nn.Sequential(first, nn.Linear(16, 16, bias=False))
    tied[1].weight = first.weight
    assert module_storage_bytes(tied) == 16 * 16 * 4 + 16 * 4
    holder = nn.Module()  # a parameter and a buffer viewing part of it
    holder.p = nn.Parameter(torch.zeros(10, 10))
    holder.register_buffer("row", holder.p.data[2])
    holder.register_buffer("col", holder.p.data[:, 3])
    assert module_storage_bytes(holder) == 400
    other = nn.Module()
    other.register_buffer("a", torch.zeros(100)[:10])  # a view of a larger storage: only its bytes count
    assert module_storage_bytes(other) == 40
