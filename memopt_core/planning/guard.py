"""Refusing to load or copy a model that would not fit, before the operating system kills us.

A model bigger than the free memory does not fail politely: the process swaps to a crawl or the
kernel's OOM killer ends it (taking a dashboard and every session with it). So the size is
estimated first, from the config alone with the planner's exact parameter count, and compared
with the free memory minus a safety margin. The check is cheap; the margin covers what the
estimate leaves out (load-time buffers, the tokenizer, Python itself).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import torch

from memopt_core.config import ModelSpec
from memopt_core.errors import MemoptError, ResourceError

GiB = 2**30
MiB = 2**20
# needed x 1.2 + 512 MiB must be free: loading briefly holds more than the weights, and the rest
# of the process (interpreter, tokenizer, evaluation batches) needs room too.
MARGIN_FACTOR = 1.2
MARGIN_BYTES = 512 * MiB
ADVICE = "choose a smaller model, a lower precision (bfloat16), or free memory"
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

Available = Callable[[], int]


def host_available_bytes() -> int:
    """Free host memory as the kernel sees it (reclaimable caches included)."""
    return int(psutil.virtual_memory().available)


def device_available_bytes(device: torch.device | str | None) -> int:
    """Free memory where tensors on ``device`` live: host RAM, or the free memory of a CUDA device."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_bytes()


# Module-level and looked up at call time, so tests (and callers) can swap in a fake.
available_bytes: Available = host_available_bytes


def required_bytes(needed_bytes: int) -> int:
    """What must be free for ``needed_bytes`` to be safe: needed x MARGIN_FACTOR + MARGIN_BYTES."""
    return int(needed_bytes * MARGIN_FACTOR) + MARGIN_BYTES


def check_fits(needed_bytes: int | None, what: str, available: Available | int | None = None,
               detail: str = "") -> None:
    """Raise ResourceError unless ``needed_bytes`` (plus the margin) fits in free memory.

    ``what`` names the thing, e.g. ``"model 'gpt2' in float32"``; ``detail`` says where the figure
    comes from (e.g. ``"124,439,808 parameters x 4 bytes"``). ``available`` is free bytes, or a
    function returning them; by default the host's free memory. ``needed_bytes=None`` (size
    unknown) passes: refusing every model the planner cannot count would be worse.
    """
    if needed_bytes is None:
        return
    free = available() if callable(available) else available
    free = available_bytes() if free is None else int(free)
    if required_bytes(needed_bytes) <= free:
        return
    source = f" ({detail})" if detail else ""
    raise ResourceError(
        f"{what} needs about {needed_bytes / GiB:.2f} GiB{source}, but only {free / GiB:.2f} GiB of memory is "
        f"free (with a margin of x{MARGIN_FACTOR} + {MARGIN_BYTES // MiB} MiB); {ADVICE}")


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per parameter of a dtype name (``'float32'``) or a ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    return _DTYPE_BYTES[str(dtype)]


def count_params(config: Any) -> int | None:
    """The parameter count of a config (a transformers config, dict or path); see :func:`_count`."""
    return _count(config)[0]


def _count(config: Any) -> tuple[int | None, str]:
    """(parameters, how they were counted).

    The planner's exact count (the model built on the meta device); its rough upper bound from the
    size fields when it cannot build the architecture (custom code, an absurd size); None when
    even those fields are missing: then the size is unknown, not zero.
    """
    from memopt_core.planning.counting import count_parameters  # transformers: see _rough_params

    # Through a dict, so the planner drops auto_map: counting never imports a model's own code.
    fields = config.to_dict() if hasattr(config, "to_dict") else config
    try:
        return count_parameters(fields).total, "planner estimate"
    except MemoptError:
        return _rough_params(config), "planner's rough upper bound"


def _rough_params(config: Any) -> int | None:
    """An upper bound from the size fields alone (hidden size, layers, heads, vocabulary)."""
    # transformers (seconds to import) only when a config is counted: the dashboard's sidebar
    # imports this module through the bundled model list on every page.
    from transformers import PretrainedConfig

    from memopt_core.planning.presets import model_dims

    try:
        with warnings.catch_warnings():  # deprecation notes about unrelated fields would reach stderr
            warnings.simplefilter("ignore")
            if not isinstance(config, PretrainedConfig):
                config = PretrainedConfig(**config) if isinstance(config, dict) else None
            return None if config is None else model_dims(config).rough_params()
    except (MemoptError, TypeError, ValueError, AttributeError):
        return None


def estimate_load_bytes(spec_or_config: Any, dtype: str | torch.dtype | None = None) -> int | None:
    """Bytes of the weights once loaded in ``dtype``: planner parameter count x bytes per parameter.

    ``spec_or_config`` is a config (transformers, dict or path) or a ModelSpec whose source is a
    local folder (its config.json is read; hub ids and bundled keys give None: load their config
    first). ``dtype`` defaults to the spec's dtype, else float32.
    """
    if isinstance(spec_or_config, ModelSpec):
        dtype = dtype or spec_or_config.dtype
        if spec_or_config.origin != "local":
            return None
        spec_or_config = spec_or_config.source
    params = count_params(spec_or_config)
    return None if params is None else params * dtype_bytes(dtype or "float32")


def check_load_fits(config: Any, dtype: str, name: str, available: Available | int | None = None) -> None:
    """Refuse to load ``name`` when its weights in ``dtype`` (planner count) would not fit in free RAM;
    the refusal offers the layer-by-layer route with a cap and the planner's peak estimate for it."""
    params, how = _count(config)
    if params is None:
        return
    size = dtype_bytes(dtype)
    free = available() if callable(available) else available
    free = available_bytes() if free is None else int(free)
    try:
        check_fits(params * size, f"model {name!r} in {dtype}", free,
                   detail=f"{how}: {params:,} parameters x {size} bytes")
    except ResourceError as error:
        raise ResourceError(f"{error}{layer_by_layer_offer(config, size, free)}") from None


def layer_by_layer_offer(config: Any, size: int, free: int) -> str:
    """'; or compress it layer by layer with --max-memory N ...': the largest cap whose planned peak
    (see planning.layer_by_layer) passes this guard's margin, or why even that would not fit."""
    from memopt_core.planning.layer_by_layer import suggest_cap  # transformers: see _rough_params

    try:
        peak = suggest_cap(config, size, int((free - MARGIN_BYTES) / MARGIN_FACTOR))
    except MemoptError:  # a config the planner cannot build: no offer rather than a second error
        return ""
    if peak is None:
        return "; even layer by layer (one block at a time) it would not fit"
    return (f"; or compress it layer by layer, one block at a time: run --max-memory {peak.max_memory // MiB}MiB "
            f"(planner's peak estimate {peak.total_bytes / GiB:.2f} GiB)")


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (tied tensors counted once): what a copy needs."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


@contextmanager
def out_of_memory_as_resource_error(what: str, device: torch.device | str | None = None) -> Iterator[None]:
    """Turn an allocator failure while loading or copying into a one-line ResourceError.

    On CUDA the cached blocks of the failed attempt are released (``empty_cache``), so the process
    and any other session in it can go on with the memory that is left.
    """
    try:
        yield
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()  # a no-op when CUDA was never initialised
        where = f" on {device}" if device is not None else ""
        raise ResourceError(f"{what} ran out of memory{where}; {ADVICE}, or use the cpu") from None
    except MemoryError:
        raise ResourceError(f"{what} ran out of host memory; {ADVICE}") from None
