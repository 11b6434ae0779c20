"""Randomized Hadamard rotation: orthogonal, function-preserving, against scipy's Hadamard matrix."""
from __future__ import annotations

import pytest
import scipy.linalg
import torch

from memopt_core.primitives.formats.hadamard import (absmax_to_rms, block_size, hadamard, random_signs,
                                                     rotate_hessian, rotate_input, rotate_weight, unrotate_weight)


def dense_rotation(n):
    """Q = D H as an explicit [n, n] matrix (float64), built from scipy's Hadamard."""
    b = block_size(n)
    h = torch.from_numpy(scipy.linalg.hadamard(b)).double() / b ** 0.5
    blocks = torch.block_diag(*[h] * (n // b))
    return torch.diag(random_signs(n).double()) @ blocks


@pytest.mark.parametrize("n, b", [(576, 64), (1536, 512), (384, 128), (64, 64), (96, 32)])
def test_block_size_is_the_largest_power_of_two_dividing_the_width(n, b):
    assert block_size(n) == b


def test_hadamard_equals_scipy_and_is_orthogonal():
    h = hadamard(16)
    assert torch.equal(h * 4, torch.from_numpy(scipy.linalg.hadamard(16)).float())
    assert torch.allclose(h @ h, torch.eye(16), atol=1e-6)


def test_rotations_equal_the_dense_matrix_products():
    n = 192
    q = dense_rotation(n)
    w = torch.randn(8, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    signs = random_signs(n)
    assert torch.allclose(rotate_weight(w, signs), w @ q, atol=1e-12)
    assert torch.allclose(rotate_input(x, signs), x @ q, atol=1e-12)  # row vectors: (Q^T x)^T = x^T Q
    assert torch.allclose(unrotate_weight(w @ q, signs), w, atol=1e-12)
    hx = x.T @ x
    assert torch.allclose(rotate_hessian(hx, signs), q.T @ hx @ q, atol=1e-10)


def test_the_layer_function_is_unchanged_in_float32():
    n = 576
    w = torch.randn(64, n, generator=torch.Generator().manual_seed(2))
    x = torch.randn(10, n, generator=torch.Generator().manual_seed(3))
    signs = random_signs(n)
    assert torch.allclose(rotate_input(x, signs) @ rotate_weight(w, signs).T, x @ w.T, atol=1e-4)


def test_rotation_spreads_an_outlier():
    w = torch.randn(4, 256, generator=torch.Generator().manual_seed(4)) * 0.02
    w[0, 17] = 1.0  # one weight 50 sigma out
    before = absmax_to_rms(w)
    after = absmax_to_rms(rotate_weight(w, random_signs(256)))
    assert before[0] > 10 and after[0] < 4  # the spike is shared by all 256 columns of the block
