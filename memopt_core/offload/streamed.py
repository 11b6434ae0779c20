"""Loading a model under a memory cap with accelerate's big-model machinery.

The skeleton is built inside ``init_empty_weights`` (parameters on the meta device: no memory, no
random initialisation). ``infer_auto_device_map`` then keeps modules resident in model order, whole
transformer blocks at a time, up to a resident budget (the planner's: the cap less what the run
holds beside the resident weights, see ``planning.layer_by_layer``), and sends the rest to
``"disk"``. ``dispatch_model`` attaches hooks that read a disk module's tensors just before its
forward and drop them right after (``offload_buffers``: packed codes are buffers), so evaluation
streams the blocks that do not fit. Disk tensors are read straight from the checkpoint's
safetensors files through an accelerate offload index that points into them: nothing is copied.

Reads a folder of safetensors: an original model (a local folder, the bundled ones) or a memopt
save, sharded or not. Pickled ``.bin`` checkpoints would have to be read whole, so they are refused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
from accelerate.hooks import remove_hook_from_module
from accelerate.utils import find_tied_parameters, retie_parameters, set_module_tensor_to_device
from safetensors import safe_open
from torch import nn

from memopt_core.compression.layers import from_spec, module_storage_bytes
from memopt_core.compression.walk import find_blocks, set_module
from memopt_core.config import ModelSpec, OffloadConfig
from memopt_core.errors import ConfigError, ModelLoadError
from memopt_core.loading.devices import resolve_device
from memopt_core.loading import bundled
from memopt_core.loading.architectures import model_class
from memopt_core.loading.models import LoadedModel, local_folder
from memopt_core.loading.saved import MANIFEST, read_manifest, safetensors_files
from memopt_core.offload.unmapped_read import read_tensor

Index = dict[str, dict[str, str]]  # accelerate offload index: tensor name -> safetensors file, name in it, dtype


@dataclass
class StreamedModel:
    """A model dispatched under a cap: ``device_map`` says where each top module lives ("disk":
    read from ``index`` at each forward); ``loaded.model`` runs like any model. ``max_memory`` is
    the user's cap on the run's peak, ``resident_budget`` the part of it the map could keep resident."""

    loaded: LoadedModel
    folder: Path
    index: Index
    device_map: dict[str, Any]
    max_memory: int
    resident_budget: int
    resident_bytes: int  # what the map kept resident, measured once loaded (the run consumes the model)
    device: torch.device
    tied: list[list[str]]  # names of tied tensors, found before dispatch (its hooks untie the meta ones)

    def stored_bytes(self) -> int:
        """Bytes of the model's tensors as held (in its dtype), tied ones once: what its files store,
        plus the buffers computed at construction (rotary tables), which no file holds."""
        model = self.loaded.model
        sizes = {}
        for name, where in self.index.items():
            tensor = _tensor(model, name)
            sizes[(where["safetensors_file"], where["weight_name"])] = tensor.numel() * tensor.element_size()
        persistent = set(model.state_dict(keep_vars=True))
        computed = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n not in persistent)
        return sum(sizes.values()) + computed

    @property
    def streamed_modules(self) -> list[str]:
        return [name for name, where in self.device_map.items() if where == "disk"]

    def describe(self) -> dict[str, Any]:
        """What stays resident and what is streamed (for a run's record)."""
        return {"max_memory": self.max_memory, "resident_budget": self.resident_budget,
                "resident_bytes": self.resident_bytes,
                "resident_modules": len(self.device_map) - len(self.streamed_modules),
                "streamed_modules": len(self.streamed_modules), "device_map": dict(self.device_map)}


def held_bytes(model: nn.Module) -> int:
    """Bytes of the weights held in memory: persistent tensors not on the meta device (the streamed
    ones are), tied ones once."""
    held = {t.data_ptr(): t.numel() * t.element_size()
            for t in model.state_dict(keep_vars=True).values() if t.device.type != "meta"}
    return sum(held.values())


def weights_index(folder: Path, model: nn.Module) -> Index:
    """Where every persistent tensor of ``model`` lies in the files of ``folder``, converted on
    reading to the dtype the (meta) model holds. Tied tensors stored once point to that one copy."""
    try:
        files = safetensors_files(folder)
    except ModelLoadError as error:
        raise ModelLoadError(f"{error}; the layer-by-layer route reads safetensors only (a pickled .bin "
                             "checkpoint would have to be read whole)") from None
    index: Index = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                index[key] = {"safetensors_file": str(file), "weight_name": key}
    for group in find_tied_parameters(model):
        stored = next((name for name in group if name in index), None)
        for name in group:
            if stored is not None and name not in index:
                index[name] = dict(index[stored])
    wanted = model.state_dict(keep_vars=True)  # persistent tensors, tied ones under each name
    missing = [name for name in wanted if name not in index]
    if missing:
        raise ModelLoadError(f"{folder} does not match its config: no tensor {missing[0]!r} in its files")
    for name, tensor in wanted.items():
        index[name]["dtype"] = str(tensor.dtype).removeprefix("torch.")
    return {name: index[name] for name in wanted}


def read_tensors(index: Index, names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors ``names`` read from their files in their index dtype, each owning its memory.
    Read with plain file reads (``unmapped_read``): a copy out of safetensors' mapping would hold
    each tensor twice for a moment, and the largest one set the peak of a capped load."""
    out = {}
    for name in names:
        where = index[name]
        tensor = read_tensor(where["safetensors_file"], where["weight_name"])
        out[name] = tensor.to(device=device, dtype=getattr(torch, where["dtype"]))
    return out


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, attribute = name.rpartition(".")
    return getattr(model.get_submodule(owner), attribute)


def _tensor_names(model: nn.Module, prefix: str) -> list[str]:
    """Persistent tensors (what files hold) of the module ``prefix``, by their names in ``model``."""
    module = model.get_submodule(prefix) if prefix else model
    return list(module.state_dict(prefix=f"{prefix}." if prefix else "", keep_vars=True))


def onload_(model: nn.Module, prefix: str, index: Index, device: torch.device) -> None:
    """Give the module ``prefix`` of ``model`` its real tensors (in place): its dispatch hook is
    removed and every tensor still on the meta device is read from ``index``."""
    module = model.get_submodule(prefix)
    remove_hook_from_module(module, recurse=True)
    names = [n for n in _tensor_names(model, prefix) if _tensor(model, n).device.type == "meta"]
    for name, tensor in read_tensors(index, names, device).items():
        set_module_tensor_to_device(model, name, device, value=tensor)


def _forget_tied_(model: nn.Module, pointers: set[int]) -> None:
    """Drop the tensors at ``pointers`` from accelerate's ``tied_params_map`` (data pointer ->
    device -> tensor, one dict shared by the dispatch hooks still attached). A resident tied
    tensor (SmolLM2's embedding and head: 108 MiB) is recorded there at dispatch and would stay
    alive after its module is released."""
    maps = {}
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        for each in getattr(hook, "hooks", None) or [hook]:  # a SequentialHook holds several
            tied = getattr(each, "tied_params_map", None)
            if tied is not None:
                maps[id(tied)] = tied
    for tied in maps.values():
        for pointer, by_device in tied.items():
            if pointer in pointers or any(t.data_ptr() in pointers for t in by_device.values()):
                by_device.clear()  # the key stays: accelerate looks it up in later forwards


def release_(model: nn.Module, prefix: str) -> None:
    """Drop every tensor of the module ``prefix`` (in place: they move to the meta device), and
    accelerate's record of the tied ones."""
    names = _tensor_names(model, prefix)
    held = [_tensor(model, name) for name in names]
    pointers = {tensor.data_ptr() for tensor in held if tensor.device.type != "meta"}
    for name in names:
        set_module_tensor_to_device(model, name, "meta")
    _forget_tied_(model, pointers)


def plan_device_map(model: nn.Module, device: torch.device, budget: int) -> dict[str, Any]:
    """accelerate's placement of at most ``budget`` bytes of weights on ``device``: whole blocks,
    model order, the rest "disk". Weights that exceed the budget by less than one block are all
    kept: nothing is then read from disk, so the room the budget left for a block read is theirs."""
    key = (device.index or 0) if device.type == "cuda" else device.type
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    blocks = find_blocks(model)[0]
    # accelerate keeps room for the largest layer left to place (a block; none after the last) out of
    # what it is given, for reading it from disk; the budget has that room taken out already (the
    # planner counts the block read), so it is handed back rather than reserved twice.
    largest = max(module_storage_bytes(block) for block in model.get_submodule(blocks).children())
    placed = infer_auto_device_map(model, max_memory={key: budget + largest}, no_split_module_classes=no_split)
    out: dict[str, Any] = {}
    for name, where in placed.items():
        _expand_to_blocks(model, name, where, blocks, out)
    return out


def _expand_to_blocks(model: nn.Module, name: str, where: Any, blocks: str, out: dict[str, Any]) -> None:
    """accelerate merges neighbours on one device (``model.layers: disk``); split such an entry
    down to one entry per block, so each block is loaded (and compressed) on its own."""
    holds_blocks = name == "" or name == blocks or blocks.startswith(name + ".")
    if not holds_blocks:
        out[name] = where
        return
    module = model.get_submodule(name)
    for child, _ in module.named_children():
        full = f"{name}.{child}" if name else child
        if name == blocks:
            out[full] = where
        else:
            _expand_to_blocks(model, full, where, blocks, out)


def dispatch_(model: nn.Module, index: Index, device_map: dict[str, Any], device: torch.device,
              tied: list[list[str]]) -> None:
    """Read the resident modules' tensors and attach accelerate's hooks to the disk ones (in place)."""
    seconds = {name for group in tied for name in group[1:]}  # one copy of a tied tensor is read
    resident = [n for prefix, where in device_map.items() if where != "disk"
                for n in _tensor_names(model, prefix) if n not in seconds]
    resident = [n for n in resident if _tensor(model, n).device.type == "meta"]
    for name, tensor in read_tensors(index, resident, device).items():
        set_module_tensor_to_device(model, name, device, value=tensor)
    retie_parameters(model, tied)
    # As a string: accelerate hands it to safetensors, which takes no torch.device. Its warning that
    # offloaded parameters sit on the meta device states the design here, so it is not shown.
    notices = logging.getLogger("accelerate.big_modeling")
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        dispatch_model(model, device_map, main_device=str(device), offload_index=index, offload_buffers=True)
    finally:
        notices.setLevel(level)
    model.hf_device_map = device_map


def _skeleton(folder: Path, dtype: torch.dtype, modules: dict[str, dict]) -> tuple[nn.Module, str]:
    """(model on the meta device, kind) from ``folder``'s config; ``modules`` are memopt specs of
    compressed layers to put in place of the Linears (their buffers on the meta device too)."""
    from transformers import AutoConfig  # seconds to import: loaded with the first model, as elsewhere

    config = AutoConfig.from_pretrained(folder)
    kind, auto_class = model_class(config)
    with init_empty_weights():  # buffers stay real: non-persistent ones (rotary tables) have no file
        model = auto_class.from_config(config, dtype=dtype)
    model.tie_weights()  # outside the context: inside it, tying registers a new meta parameter
    with init_empty_weights(include_buffers=True):
        for name, spec in modules.items():
            set_module(model, name, from_spec(spec))
    model.eval().requires_grad_(False)
    return model, kind


def source_folder(spec: ModelSpec) -> tuple[Path, str, str, bool]:
    """(folder, display name, source, is_random) of a spec on the layer-by-layer route."""
    if spec.origin == "bundled":
        info = bundled.bundled_info(spec.source)
        if info.is_random:
            folder = bundled.tiny_folder(info.key)
        else:
            folder = bundled.smollm2_folder() if info.key == "smollm2-135m" else bundled.minilm_folder()
        return folder, info.name, f"bundled {info.name}, read from {folder}", info.is_random
    if spec.origin == "hub":
        raise ConfigError(f"the layer-by-layer route reads a local folder of safetensors; download {spec.source!r} "
                          "first (huggingface-cli download ID --local-dir DIR) and pass that folder")
    folder = local_folder(spec.source)
    return folder, folder.name, f"local folder {folder}", False


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer  # seconds to import: loaded with the first model, as elsewhere

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_streamed(spec: ModelSpec, offload: OffloadConfig, resident_budget: int,
                  tokenizer: Any = None) -> StreamedModel:
    """Load ``spec`` (an original folder or a memopt save) holding at most ``resident_budget`` bytes
    of weights (the planner's ``resident_budget_bytes`` under the cap ``offload.max_memory``); the
    rest is streamed from its files block by block. ``tokenizer``: one already loaded for the same
    vocabulary (a compressed copy's is the original's), else read first, before any weight: parsing
    SmolLM2's takes 57 MiB for a moment (it keeps 29)."""
    device = resolve_device(spec.device)
    folder, name, source, is_random = source_folder(spec)
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    if manifest is not None:
        base = manifest["base_model"]
        name, source, is_random = f"{folder.name} (compressed {base['name']})", f"memopt save {folder}", \
            base["is_random"]
    tokenizer = tokenizer if tokenizer is not None else _tokenizer(folder)
    model, kind = _skeleton(folder, getattr(torch, spec.dtype), manifest["modules"] if manifest else {})
    index, tied = weights_index(folder, model), find_tied_parameters(model)
    device_map = plan_device_map(model, device, resident_budget)
    dispatch_(model, index, device_map, device, tied)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, kind=kind, spec=spec, name=name, is_random=is_random,
                         num_params=sum(p.numel() for p in model.parameters()), source=source,
                         architecture=type(model).__name__)
    return StreamedModel(loaded=loaded, folder=folder, index=index, device_map=device_map,
                         max_memory=offload.max_memory, resident_budget=resident_budget,
                         resident_bytes=held_bytes(model), device=device, tied=tied)
