"""Where and in what precision a model is evaluated.

The "compute in" dtype of an evaluation is applied with ``torch.autocast``: weights stay as they
are held (the original in its loaded dtype, the copy packed), matrix products run in the compute
dtype, and the compressed layers dequantize straight to it (see ``compression/layers.py``).
Log-softmax, losses and KL are always taken in float32.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch
from torch import nn

from memopt_core.errors import ConfigError

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter that holds data (CPU for none): a model dispatched
    layer by layer keeps the parameters of its modules on disk on the meta device."""
    param = next((p for p in model.parameters() if p.device.type != "meta"), None)
    return param.device if param is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 when it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compute_dtype_of(model: nn.Module, compute: str | None) -> torch.dtype:
    """The dtype ``model`` computes in for a "compute in" choice (None: as its weights are held).

    Raises ConfigError for float32 compute on 16-bit weights: autocast only lowers precision."""
    held = model_dtype(model)
    if compute is None:
        return held
    if compute not in COMPUTE_DTYPES:
        raise ConfigError(f"compute dtype {compute!r} is not supported; choose 'float32' or 'bfloat16'")
    wanted = COMPUTE_DTYPES[compute]
    if wanted == torch.float32 and held != torch.float32:
        raise ConfigError(f"compute in float32 needs weights loaded in float32 (they are {str(held)[6:]}); "
                          "load the model in float32 or compute in its own dtype")
    return wanted


@contextmanager
def compute_in(model: nn.Module, compute: str | None) -> Iterator[torch.dtype]:
    """Run the block's forwards in the compute dtype; yields it. A no-op when it is the held dtype."""
    dtype = compute_dtype_of(model, compute)
    device = model_device(model)
    if dtype == model_dtype(model):
        context = nullcontext()
    else:
        context = torch.autocast(device_type=device.type, dtype=dtype)
    with context:
        yield dtype
