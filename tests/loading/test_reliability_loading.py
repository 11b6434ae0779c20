"""Loading is safe: a model's own code never runs unless asked, weights are never unpickled.

Each hostile folder carries a payload that would write a marker file if it ran; the tests assert
the marker never appears, and one control per payload shows that the payload does work when it
is allowed to run (so "no marker" means "not executed", not "broken payload").
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memopt_core.cli import main
from memopt_core.config import ModelSpec
from memopt_core.errors import ModelLoadError
from memopt_core.loading import bundled
from memopt_core.loading.models import REMOTE_CODE_WARNING, load_model
from tiny_models import make_tiny_llama

ROOT = Path(__file__).resolve().parents[2]


def _tiny_folder(folder: Path) -> Path:
    """A real tiny Llama folder (weights as safetensors, SmolLM2's tokenizer)."""
    from transformers import AutoTokenizer

    make_tiny_llama(vocab_size=len(AutoTokenizer.from_pretrained(bundled.smollm2_tokenizer_folder()))) \
        .save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled.smollm2_tokenizer_folder()).save_pretrained(folder)
    return folder


# remote code ---------------------------------------------------------------------------------------

_CONFIG_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("configuration code ran")
from transformers import LlamaConfig


class EvilConfig(LlamaConfig):
    model_type = "evil-llama"
"""
_MODELING_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("modeling code ran")
from transformers import LlamaForCausalLM
from .configuration_evil import EvilConfig


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


def _remote_code_folder(tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    """A tiny model whose config.json points auto_map at Python files that write a marker on import."""
    folder, marker = _tiny_folder(tmp_path / f"remote-{model_type}"), tmp_path / f"ran-{model_type}.txt"
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_evil.py").write_text(_CONFIG_CODE.format(marker=str(marker)))
    (folder / "modeling_evil.py").write_text(_MODELING_CODE.format(marker=str(marker)))
    return folder, marker


def test_custom_code_is_not_run_without_trust_remote_code(tmp_path):
    folder, marker = _remote_code_folder(tmp_path, "evil-llama")
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSpec(str(folder)))
    message = str(caught.value)
    assert "\n" not in message and "its own Python code" in message and "trust_remote_code=True" in message
    assert not marker.exists()


@pytest.mark.slow
def test_a_known_architecture_with_auto_map_loads_the_builtin_class_without_running_code(tmp_path):
    folder, marker = _remote_code_folder(tmp_path, "llama")
    loaded = load_model(ModelSpec(str(folder)))
    assert loaded.architecture == "LlamaForCausalLM"
    assert not marker.exists()


def test_cli_refuses_custom_code_in_one_line(tmp_path, capsys):
    folder, marker = _remote_code_folder(tmp_path, "evil-llama")
    capsys.readouterr()  # drop the progress bars of building the folder
    code = main(["run", "--model", str(folder), "--seq-len", "32", "--max-tokens", "64", "--gen-tokens", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: model ") and "--trust-remote-code" in err
    assert not marker.exists()


@pytest.mark.slow
def test_trust_remote_code_runs_the_code_and_warns(tmp_path):
    """The control: asked to, the same folder's code does run (in a child process, its module cache
    in tmp), and a warning names the risk."""
    folder, marker = _remote_code_folder(tmp_path, "evil-llama")
    script = ("import sys; from memopt_core.config import ModelSpec; from memopt_core.loading.models import load_model\n"
              "print(load_model(ModelSpec(sys.argv[1], trust_remote_code=True)).architecture)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert marker.exists(), done.stderr[-2000:]
    assert "may run Python code written by the model's author" in done.stderr


@pytest.mark.slow
def test_trust_remote_code_logs_a_warning(tmp_path, caplog):
    folder = _tiny_folder(tmp_path / "plain")
    with caplog.at_level(logging.WARNING, logger="memopt_core.loading.models"):
        load_model(ModelSpec(str(folder), trust_remote_code=True))
    assert REMOTE_CODE_WARNING.format(location=str(folder)) in caplog.messages
    caplog.clear()
    load_model(ModelSpec(str(folder)))
    assert caplog.messages == []


# damaged weights -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "huge-header"])
def test_damaged_safetensors_is_a_one_line_load_error(tmp_path, damage):
    folder = _tiny_folder(tmp_path / damage)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b"",
               "huge-header": (2**62).to_bytes(8, "little") + data[8:]}[damage]
    weights.write_bytes(damaged)
    with pytest.raises(ModelLoadError, match=rf"^could not read the model in .*{damage}: ") as caught:
        load_model(ModelSpec(str(folder)))
    assert "\n" not in str(caught.value)


def test_cli_reports_damaged_weights_in_one_line(tmp_path, capsys):
    folder = _tiny_folder(tmp_path / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    code = main(["run", "--model", str(folder), "--seq-len", "32", "--max-tokens", "64", "--gen-tokens", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: could not read the model in ")


# pickles -----------------------------------------------------------------------------------------------

class _WritesMarker:
    """Unpickling this object calls ``exec``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


def _malicious_bin_folder(tmp_path: Path, name: str, zip_format: bool) -> tuple[Path, Path]:
    """A folder with a config, a tokenizer and only a pytorch_model.bin that writes a marker when unpickled."""
    folder, marker = _tiny_folder(tmp_path / name), tmp_path / f"{name}-unpickled.txt"
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    if zip_format:  # what torch.save writes: a zip holding data.pkl
        torch.save({"model.embed_tokens.weight": _WritesMarker(marker)}, weights)
    else:  # a bare pickle, the legacy format
        weights.write_bytes(pickle.dumps(_WritesMarker(marker), protocol=2))
    return folder, marker


def test_the_pickle_payload_works_when_unpickled_unsafely(tmp_path):
    """The control: a plain pickle.loads / torch.load(weights_only=False) does run the payload."""
    marker = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_WritesMarker(marker)))
    assert marker.exists()
    folder, zip_marker = _malicious_bin_folder(tmp_path, "control-zip", zip_format=True)
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert zip_marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-save-zip", "bare-pickle"])
def test_a_malicious_pickle_checkpoint_is_refused_without_running(tmp_path, zip_format):
    folder, marker = _malicious_bin_folder(tmp_path, "evil-bin", zip_format)
    with pytest.raises(ModelLoadError, match=r"^could not read the model in .*evil-bin: ") as caught:
        load_model(ModelSpec(str(folder)))
    assert "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.slow
def test_safetensors_are_preferred_over_a_malicious_pickle_beside_them(tmp_path):
    folder, marker = _malicious_bin_folder(tmp_path, "both", zip_format=True)
    _tiny_folder(tmp_path / "clean")
    (folder / "model.safetensors").write_bytes((tmp_path / "clean" / "model.safetensors").read_bytes())
    assert load_model(ModelSpec(str(folder))).architecture == "LlamaForCausalLM"
    assert not marker.exists()


def test_the_engine_never_unpickles_weights_itself():
    """Weights go through safetensors or transformers (weights_only); no torch.load or pickle.load of ours."""
    offenders = []
    for path in (ROOT / "memopt_core").rglob("*.py"):
        text = path.read_text()
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{path.name}: {call.group(0)}")
        offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"pickle\.loads?\(", text)]
    assert offenders == []
