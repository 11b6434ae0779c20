"""Wanda and SparseGPT: masks against their formulas, exact sparsity and N:M, SparseGPT against a plain
OBS reference written here (explicit inverse Hessian, downdated column by column)."""
from __future__ import annotations

import math

import pytest
import torch

from gptq_support import correlated_inputs, hessian, output_error, weight
from memopt_core.compression.layers import QuantLinear, copy_bias
from memopt_core.config import QuantConfig, SolverConfig
from memopt_core.errors import ConfigError
from memopt_core.primitives.gptq import gptq_quantize
from memopt_core.primitives.sparsegpt import sparsegpt_prune
from memopt_core.primitives.sparsity import magnitude_mask
from memopt_core.primitives.wanda import input_sq_norms_from_hessian, wanda_mask, wanda_scores


def _groups(t: torch.Tensor, m: int) -> torch.Tensor:
    rows, cols = t.shape
    return t[:, :cols - cols % m].reshape(rows, -1, m)


def test_wanda_mask_is_the_formula_row_by_row():
    x = correlated_inputs(300, 20, seed=1)
    w = weight(6, 20, seed=2)
    sq_norms = (x ** 2).sum(0)
    keep = wanda_mask(w, sq_norms, ratio=0.3)
    for r in range(6):
        scores = [abs(w[r, j].item()) * math.sqrt(sq_norms[j].item()) for j in range(20)]
        dropped = sorted(range(20), key=lambda j: scores[j])[:6]  # round(0.3 * 20) lowest of the row
        assert set(torch.nonzero(~keep[r]).flatten().tolist()) == set(dropped)
    assert torch.allclose(wanda_scores(w, sq_norms).double(), w.abs() * sq_norms.sqrt()[None, :], rtol=1e-6)


def test_wanda_nm_keeps_the_n_best_scores_of_every_m():
    x = correlated_inputs(200, 18, seed=3)  # 18 = four groups of 4 and a dense tail of 2
    w = weight(5, 18, seed=4)
    keep = wanda_mask(w, (x ** 2).sum(0), n=2, m=4)
    scores = _groups(w.abs() * (x ** 2).sum(0).sqrt()[None, :], 4)
    kept = _groups(keep, 4)
    assert torch.all(kept.sum(-1) == 2)
    best = scores.topk(2, dim=-1).indices
    assert torch.all(kept.gather(-1, best))
    assert torch.all(keep[:, 16:])


def test_norms_from_the_hessian_diagonal():
    x = correlated_inputs(64, 8, seed=5)
    assert torch.allclose(input_sq_norms_from_hessian(hessian(x), 64).double(), (x ** 2).sum(0), rtol=1e-6)


def reference_sparsegpt(w, h, ratio=0.5, n=0, m=0, block=8, damp=0.01):
    """Plain SparseGPT: explicit inverse Hessian downdated per column; adaptive masks per block of
    ``block`` columns from ``w^2 / [H_F^-1]_jj`` (the inverse of the columns not yet visited)."""
    out_f, in_f = w.shape
    w, h = w.clone(), h.clone()
    h += torch.eye(in_f, dtype=h.dtype) * damp * torch.diagonal(h).mean()
    hinv = torch.linalg.inv(h)
    diag, walk = torch.empty(in_f, dtype=h.dtype), hinv.clone()
    for j in range(in_f):  # the diagonal each column will see when its turn comes
        diag[j] = walk[j, j]
        walk = walk - walk[:, j:j + 1] @ walk[j:j + 1, :] / walk[j, j]
    keep = torch.ones(out_f, in_f, dtype=torch.bool)
    for p in range(in_f):
        if not m and p % block == 0:
            end = min(p + block, in_f)
            k = round(ratio * out_f * end) - round(ratio * out_f * p)
            saliency = (w[:, p:end] ** 2 / diag[p:end][None, :]).reshape(-1)
            flat = keep[:, p:end].reshape(-1).clone()
            flat[saliency.argsort()[:k]] = False
            keep[:, p:end] = flat.view(out_f, end - p)
        if m and p % m == 0 and p + m <= in_f - in_f % m:
            saliency = w[:, p:p + m] ** 2 / diag[p:p + m][None, :]
            group = torch.zeros(out_f, m, dtype=torch.bool)
            group.scatter_(1, saliency.topk(n, dim=1).indices, True)
            keep[:, p:p + m] = group
        error = w[:, p] * ~keep[:, p]
        w[:, p] -= error
        w[:, p + 1:] -= (error / hinv[p, p])[:, None] * hinv[p, p + 1:][None, :]
        hinv = hinv - hinv[:, p:p + 1] @ hinv[p:p + 1, :] / hinv[p, p]
    return w, keep


@pytest.mark.parametrize("ratio,n,m", [(0.5, 0, 0), (0.3, 0, 0), (0.0, 2, 4), (0.0, 4, 8)])
def test_sparsegpt_matches_the_plain_reference(ratio, n, m):
    x = correlated_inputs(400, 36, seed=6)
    w, h = weight(10, 36, seed=7), hessian(x)
    result = sparsegpt_prune(w, h, ratio, n, m, options=SolverConfig(block_size=8))
    expected_w, expected_keep = reference_sparsegpt(w, h, ratio, n, m, block=8)
    assert torch.equal(result.keep, expected_keep)
    assert torch.allclose(result.weight, expected_w, atol=1e-10)


def test_sparsegpt_sparsity_is_exact_and_beats_wanda_and_magnitude():
    x = correlated_inputs(2048, 96, seed=8)
    w, h = weight(40, 96, seed=9), hessian(x)
    result = sparsegpt_prune(w, h, 0.5)
    assert int((result.weight == 0).sum()) == round(0.5 * w.numel()) == int((~result.keep).sum())
    assert torch.all(result.weight[~result.keep] == 0)
    sparse_err = output_error(x, w, result.weight)
    wanda_err = output_error(x, w, w * wanda_mask(w, (x ** 2).sum(0), 0.5))
    magnitude_err = output_error(x, w, w * magnitude_mask(w, 0.5))
    assert sparse_err < wanda_err < magnitude_err


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_sparsegpt_nm_is_exact(n, m):
    x = correlated_inputs(512, 64, seed=10)
    w = weight(16, 64, seed=11).float()
    result = sparsegpt_prune(w, hessian(x).float(), n=n, m=m)
    nonzero = _groups(result.weight != 0, m).sum(-1)
    assert torch.all(nonzero == n)
    assert result.weight.dtype == torch.float32
    assert output_error(x.float(), w, result.weight) < output_error(x.float(), w, w * wanda_mask(w, (x.float() ** 2).sum(0), n=n, m=m))


@pytest.mark.parametrize("cfg", [QuantConfig(method="gptq", bits=4),
                                 QuantConfig(method="gptq", bits=3, granularity="group", group_size=16),
                                 QuantConfig(method="gptq", bits=4, symmetric=False, zero_point="float")])
def test_joint_pruning_and_quantization_is_gptq_under_the_chosen_mask(cfg):
    x = correlated_inputs(512, 48, seed=12)
    w, h = weight(12, 48, seed=13), hessian(x)
    joint = sparsegpt_prune(w, h, n=2, m=4, quant=cfg)
    alone = gptq_quantize(w, h, cfg, SolverConfig(act_order=False), keep=joint.keep)
    assert torch.equal(joint.quantized.codes, alone.codes) and torch.equal(joint.quantized.scale, alone.scale)
    # The layer that stores it keeps pruned weights at 0 (with a mask where the grid cannot hold 0).
    source = torch.nn.Linear(48, 12).double()
    layer = QuantLinear.from_quantized(joint.quantized, copy_bias(source), source.weight.dtype, keep=joint.keep)
    restored = layer.dequantized_weight()
    assert torch.all(restored[~joint.keep] == 0) and torch.equal(joint.weight, restored)
    assert (layer.mask is not None) == (cfg.zero_point == "float" and not cfg.symmetric)


def test_bad_requests_are_config_errors():
    w, h = weight(4, 12), hessian(correlated_inputs(64, 12))
    with pytest.raises(ConfigError, match="multiple of M"):
        sparsegpt_prune(w, h, n=2, m=5)
    with pytest.raises(ConfigError, match="Hessian"):
        sparsegpt_prune(w, h[:4, :4])
    with pytest.raises(ConfigError, match="input norms"):
        wanda_scores(w, torch.ones(5))
