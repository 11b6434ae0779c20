"""One tensor of a safetensors file read with plain file reads, not through a memory mapping.

safetensors hands out tensors that view a mapping of the whole file. Copying one out of it holds
the mapped pages (resident while the mapping lives) and the copy at once: twice the tensor, which
made the peak of loading a model under a memory cap (measured: 216 MiB above the start for
SmolLM2's 108 MiB embedding). Reading the bytes straight into the tensor that keeps them holds
them once. The layout is the format's own: an 8-byte little-endian header length, a JSON header
with each tensor's dtype, shape and byte offsets, then the data. Tested against safetensors'
own reader; a dtype this table lacks is read through safetensors.
"""
from __future__ import annotations

import functools
import json
import os

import torch
from safetensors import safe_open
from torch import Tensor

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


@functools.lru_cache(maxsize=32)
def _header(path: str, size: int, modified_ns: int) -> tuple[int, dict]:
    """(where the data starts, the parsed header) of one file version (size and mtime key the cache)."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        return 8 + length, json.loads(handle.read(length))


def read_tensor(path: str, name: str) -> Tensor:
    """The tensor ``name`` of the safetensors file ``path`` on the CPU, owning its memory."""
    stat = os.stat(path)
    data_start, entries = _header(path, stat.st_size, stat.st_mtime_ns)
    entry = entries[name]
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        with safe_open(path, framework="pt") as handle:
            return handle.get_tensor(name).clone()
    begin, end = entry["data_offsets"]
    out = torch.empty(entry["shape"], dtype=dtype)
    target = memoryview(out.reshape(-1).view(torch.uint8).numpy())  # [end - begin] bytes
    with open(path, "rb", buffering=0) as handle:
        handle.seek(data_start + begin)
        done = 0
        while done < end - begin:  # a read may return fewer bytes than asked
            got = handle.readinto(target[done:])
            if not got:
                raise OSError(f"{path} ends inside tensor {name!r}")
            done += got
    return out
