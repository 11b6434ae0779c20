"""Inputs and error measures shared by the GPTQ, SparseGPT and calibration tests."""
from __future__ import annotations

import math

import torch


def correlated_inputs(n: int, width: int, seed: int = 0) -> torch.Tensor:
    """``[n, width]`` activations with strongly correlated features and uneven scales, like real ones."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=g, dtype=torch.float64) / math.sqrt(width)
    mixing += torch.eye(width, dtype=torch.float64) * 0.3
    scales = torch.logspace(-1, 1, width, dtype=torch.float64)[torch.randperm(width, generator=g)]
    return (torch.randn(n, width, generator=g, dtype=torch.float64) @ mixing) * scales


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 / x.shape[0] * x.T @ x


def weight(out_f: int, in_f: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.1


def output_error(x, w, approx):
    return torch.linalg.norm(x @ w.T - x @ approx.T).item()
