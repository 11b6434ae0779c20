"""What an export starts from: a setting run now on a loaded original, or a ``run --save`` folder.

Either way the compressed model is evaluated by memopt's own protocol first, so the export report
puts memopt's figure and the format loader's figure side by side on the same windows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memopt_core.compression.memory import stored_bytes
from memopt_core.compression.sparsity import layer_sparsity, overall_sparsity
from memopt_core.config import EvalConfig, ModelSpec, RunConfig
from memopt_core.errors import ConfigError, ModelLoadError
from memopt_core.evaluation.encoder import sentence_embeddings
from memopt_core.evaluation.quality import evaluate, prepare
from memopt_core.export.service import ExportSource
from memopt_core.loading.models import LoadedModel, load_model
from memopt_core.paths import user_path
from memopt_core.loading.saved import MANIFEST

if TYPE_CHECKING:  # the type only: export sits beside runs, not above it
    from memopt_core.runs.workbench import Workbench


def _inputs(loaded: LoadedModel, data, model, reference) -> dict[str, Any]:
    """Evaluation inputs of the round trip: windows for causal LMs, sentences (and embeddings) for encoders."""
    if loaded.kind == "causal-lm":
        return {"windows": data.windows}
    sentences = [s for s, _ in data.sentences]
    return {"sentences": sentences, "memopt_embeddings": sentence_embeddings(model, loaded.tokenizer, sentences),
            "original_embeddings": None if reference is None else reference.embeddings}


def source_from_run(bench: "Workbench", config: RunConfig) -> ExportSource:
    """Compress a copy of ``bench``'s original at ``config`` and evaluate it (the original is not changed)."""
    if config.quant is not None and config.quant.storage == "fake":
        raise ConfigError("fake quantization keeps dequantized floats: an export needs the packed codes; drop --fake")
    baseline = bench.baseline(config.eval)
    compressed, memory = bench.compress(config)
    metrics, _ = evaluate(compressed.model, bench.loaded, baseline.data, config.eval, baseline.reference)
    rows = layer_sparsity(compressed.model, compressed.target_names)
    memopt = {"setting": config.label, **metrics, "stored_bytes": memory.stored_bytes,
              "bits_per_weight": memory.bits_per_weight, "sparsity": overall_sparsity(rows),
              "protocol": baseline.data.protocol}
    return ExportSource(compressed.model, bench.loaded.tokenizer, bench.loaded.kind, bench.loaded.name, memopt,
                        **_inputs(bench.loaded, baseline.data, compressed.model, baseline.reference))


def read_save_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``memopt.json`` of a ``run --save`` folder; one-line errors for anything else."""
    path = user_path(folder, "--from folder")
    if not (path / MANIFEST).is_file():
        raise ModelLoadError(f"{str(path)!r} is not a folder written by 'run --save' (no {MANIFEST})")
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path / MANIFEST} cannot be read: {error}") from None


def source_from_saved(folder: str | Path, eval_config: EvalConfig, device: str = "cpu") -> ExportSource:
    """Load a ``run --save`` folder and evaluate it on ``eval_config``'s windows."""
    manifest = read_save_manifest(folder)
    loaded = load_model(ModelSpec(str(Path(folder).expanduser()), device=device))
    data = prepare(loaded, eval_config)
    metrics, _ = evaluate(loaded.model, loaded, data, eval_config)
    run = manifest.get("run") or {}
    config = RunConfig.from_dict(run["config"]) if run.get("config") else None
    memopt = {"setting": config.label if config else "saved", **metrics,
              "stored_bytes": stored_bytes(loaded.model),
              "bits_per_weight": (run.get("memory") or {}).get("bits_per_weight"),
              "sparsity": run.get("sparsity"), "recorded_perplexity": (run.get("compressed") or {}).get("perplexity"),
              "protocol": data.protocol}
    names = list(manifest.get("modules") or [])
    if names and memopt["sparsity"] is None:
        memopt["sparsity"] = overall_sparsity(layer_sparsity(loaded.model, names))
    return ExportSource(loaded.model, loaded.tokenizer, loaded.kind, loaded.name, memopt,
                        **_inputs(loaded, data, loaded.model, None))
