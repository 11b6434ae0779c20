"""Finding the Linear layers to compress in any transformers architecture.

The transformer blocks are the longest ``nn.ModuleList`` whose entries hold ``nn.Linear``
layers (``model.layers`` in Llama, ``encoder.layer`` in BERT, ``h`` in GPT-NeoX ...), so no
per-architecture table is needed.
"""
from __future__ import annotations

import fnmatch
import re

from torch import nn

from memopt_core.config import TargetConfig
from memopt_core.errors import UnsupportedModelError

_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (name, module list) of the transformer blocks: the longest ModuleList with Linears."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        has_linear = any(is_linear(m) for m in module[0].modules())
        if has_linear and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no stack of blocks with nn.Linear layers; memopt compresses nn.Linear only")
    return best


def is_linear(module: nn.Module) -> bool:
    """An nn.Linear, or a compressed stand-in for one (memopt_core.compression.layers: it can rebuild its weight)."""
    return isinstance(module, nn.Linear) or callable(getattr(module, "dequantized_weight", None))


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear layer (plain or compressed) in the model, by qualified name. A compressed layer
    that wraps another (a rotated layer's ``inner``) is one layer: only the outer one is listed."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():  # parents come before their children
        if is_linear(module) and not any(name.startswith(f"{outer}.") for outer in found):
            found[name] = module
    return found


def target_linears(model: nn.Module, targets: TargetConfig | None = None) -> dict[str, nn.Module]:
    """The Linear layers to compress, in model order.

    Default: every Linear inside the transformer blocks. With ``targets.include`` the Linears
    (anywhere, ``lm_head`` included) whose name matches a pattern; ``targets.exclude`` removes.
    """
    targets = targets or TargetConfig()
    linears = linear_layers(model)
    if targets.include:
        chosen = {n: m for n, m in linears.items() if any(fnmatch.fnmatchcase(n, p) for p in targets.include)}
    else:
        prefix = find_blocks(model)[0] + "."
        chosen = {n: m for n, m in linears.items() if n.startswith(prefix)}
    chosen = {n: m for n, m in chosen.items() if not any(fnmatch.fnmatchcase(n, p) for p in targets.exclude)}
    if not chosen:
        raise UnsupportedModelError("no Linear layer matches the target patterns; nothing would be compressed")
    return chosen


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` with ``new`` (changes ``model`` in place)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def layer_position(name: str) -> tuple[int | None, str]:
    """(block index, module type) of a layer name, for charts:
    ``model.layers.3.self_attn.q_proj`` -> ``(3, 'self_attn.q_proj')``."""
    match = _BLOCK_INDEX.search(name)
    if match is None:
        return None, name
    return int(match.group(1)), name[match.end():]


def effective_weight(module: nn.Module):
    """The dense float weight a layer computes with, ``[out, in]``.

    Plain ``nn.Linear`` returns ``weight``; compressed modules (``memopt_core.compression.layers``) rebuild it
    from what they store via ``dequantized_weight()``. Used for counting sparsity and errors.
    """
    rebuild = getattr(module, "dequantized_weight", None)
    return rebuild() if callable(rebuild) else module.weight
