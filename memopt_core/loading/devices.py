"""Turning a device name into a ``torch.device``, refusing devices this machine lacks.

There is never a silent fallback: asking for CUDA on a CPU-only machine is an error the user
sees, because numbers measured on the wrong device would be mislabelled.
"""
from __future__ import annotations

import re

import torch

from memopt_core.errors import DeviceError, choices

_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names usable here, e.g. ``['cpu']`` or ``['cpu', 'cuda', 'cuda:1']``.

    ``'cuda'`` stands for the first GPU; further GPUs are listed by index.
    """
    names = ["cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
        names.extend(f"cuda:{i}" for i in range(1, torch.cuda.device_count()))
    if _mps_available():
        names.append("mps")
    return names


def _unavailable(name: str) -> DeviceError:
    return DeviceError(f"device {name!r} is not available on this machine; available: {choices(available_devices())}")


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'mps'`` or ``'auto'``.

    ``'auto'`` picks CUDA if present, else MPS, else the CPU. Raises DeviceError for an unknown
    name or a device that is not present.
    """
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise _unavailable(text)
        return torch.device("mps")
    match = _CUDA_INDEX.fullmatch(text)
    if text == "cuda" or match:
        index = int(match.group(1)) if match else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise _unavailable(text)
        return torch.device("cuda", index)
    raise DeviceError(f"device {name!r} is not supported; choose 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
