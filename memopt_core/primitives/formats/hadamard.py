"""Randomized Hadamard rotation of a weight's input dimension (QuaRot / QuIP# style; pure tensor functions).

``Q = D H``: ``D`` a diagonal of random signs, ``H`` block-diagonal with normalised Sylvester
Hadamard blocks (``H = H^T = H^-1``) of size ``b``, the largest power of two dividing the input
width (576 -> 64, 1536 -> 512, 384 -> 128). ``Q`` is orthogonal, so

    y = W x = (W Q) (Q^T x),   Q^T x = H (D x)

The weight is quantized in the rotated basis (``W Q``) and each input is rotated the same way at
run time: with quantization off the function is unchanged (up to float rounding). Rotation
mixes every block's values, so one outlier weight spreads over ``b`` weights.
"""
from __future__ import annotations

import functools

import torch

SIGN_SEED = 0


def block_size(n: int) -> int:
    """The largest power of two dividing ``n`` (the Hadamard block size for a width ``n``)."""
    if n <= 0:
        raise ValueError(f"width {n} must be positive")
    return n & -n


@functools.lru_cache(maxsize=16)
def _sylvester(b: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < b:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return (h / b ** 0.5).float()


def hadamard(b: int) -> torch.Tensor:
    """Normalised Hadamard matrix ``[b, b]`` (``b`` a power of two), symmetric and orthogonal."""
    if b != block_size(b):
        raise ValueError(f"Hadamard size {b} must be a power of two")
    return _sylvester(b).clone()


def random_signs(n: int, seed: int = SIGN_SEED) -> torch.Tensor:
    """``[n]`` float32 of +-1 from a fixed seed: the diagonal ``D``."""
    bits = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))
    return (bits * 2 - 1).float()


def _blocks_times_h(x: torch.Tensor, b: int) -> torch.Tensor:
    """``x [..., n]`` -> each consecutive block of ``b`` times ``H`` (a new tensor, ``x``'s dtype)."""
    h = _sylvester(b).to(device=x.device, dtype=x.dtype)
    return (x.reshape(*x.shape[:-1], -1, b) @ h).reshape(x.shape)


def rotate_input(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``Q^T x = H (D x)`` for inputs ``x [..., n]`` (row vectors); ``signs [n]``. A new tensor."""
    return _blocks_times_h(x * signs.to(x.dtype), block_size(x.shape[-1]))


def rotate_weight(w: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``W Q = (W D) H`` for ``w [out, n]`` (not changed): the weight in the rotated basis."""
    return _blocks_times_h(w * signs.to(w.dtype), block_size(w.shape[-1]))


def unrotate_weight(w_rotated: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``W_rot Q^T = (W_rot H) D``: a rotated weight ``[out, n]`` back in the original basis."""
    return _blocks_times_h(w_rotated, block_size(w_rotated.shape[-1])) * signs.to(w_rotated.dtype)


def rotate_hessian(hessian: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """``Q^T H_x Q`` for the inputs' second moment ``[n, n]``: the Hessian GPTQ sees for rotated inputs."""
    once = rotate_input(hessian, signs)  # H_x Q  (rows of a symmetric matrix are its columns)
    return rotate_input(once.T.contiguous(), signs)


def absmax_to_rms(w: torch.Tensor) -> torch.Tensor:
    """Each row's ``max |w| / RMS(w)`` ``[out]``: ~3-4 for Gaussian rows of a few hundred, more with outliers."""
    x = w.detach().float()
    rms = x.pow(2).mean(dim=1).sqrt()
    return x.abs().amax(dim=1) / torch.where(rms > 0, rms, torch.ones_like(rms))
