"""Writing a model one part at a time as a sharded safetensors checkpoint (transformers' layout:
``model-00001-of-00031.safetensors`` ... and ``model.safetensors.index.json``), so no more than
one block's tensors are ever held to write them."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from memopt_core.loading.saved import SHARD_INDEX


def _own(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or a copy when it is a view into a larger buffer (safetensors refuses those)."""
    tensor = tensor.detach().contiguous()
    whole = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole else tensor.clone()


class ShardWriter:
    """Writes shard ``i`` of ``total`` per call; :meth:`finish` writes the index naming them all."""

    def __init__(self, folder: Path, total: int) -> None:
        self.folder, self.total = Path(folder), total
        self.weight_map: dict[str, str] = {}
        self.bytes = 0
        self.written = 0

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write ``tensors`` (name -> tensor; none already written) as the next shard."""
        repeated = [name for name in tensors if name in self.weight_map]
        if repeated or self.written >= self.total:
            raise ValueError(f"shard {self.written + 1} of {self.total}: {repeated[:1] or 'one shard too many'}")
        self.written += 1
        name = f"model-{self.written:05d}-of-{self.total:05d}.safetensors"
        save_file({k: _own(v) for k, v in tensors.items()}, str(self.folder / name), metadata={"format": "pt"})
        self.weight_map.update(dict.fromkeys(tensors, name))
        self.bytes += sum(t.numel() * t.element_size() for t in tensors.values())

    def finish(self) -> None:
        if self.written != self.total:
            raise ValueError(f"{self.written} of {self.total} shards written")
        index = {"metadata": {"total_size": self.bytes}, "weight_map": self.weight_map}
        (self.folder / SHARD_INDEX).write_text(json.dumps(index, indent=2))
