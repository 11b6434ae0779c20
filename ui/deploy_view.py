"""The Deploy page's widgets and views: pick what to ship and for which engine, see what each layer
becomes in that format, export (with the round trip), download, and the engines x settings table."""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from memopt_core.config import EvalConfig, ModelSpec, RunConfig
from memopt_core.errors import ConfigError
from memopt_core.export.engines import ENGINES, support_table
from memopt_core.export.formats import K_QUANTS, TYPES, format_type, setting_for_type
from memopt_core.loading.cache import cache_dir
from ui.errors import user_errors
from ui.loaders import workbench
from ui.saved_models import list_saved, zip_folder

KEEP = "session"
AUTO = "auto"
REPORT, PLAN = "deploy.report", "deploy.plan"
MIB = 2**20


def target_widgets() -> tuple[str, str | None, bool]:
    """Engine and type -> (format, type or None for the one holding the codes, type is usable)."""
    names = [engine.name for engine in ENGINES]
    engine = st.selectbox("Target engine", names, key="deploy.engine", persist_state=KEEP)
    chosen = next(e for e in ENGINES if e.name == engine)
    st.caption(f"Format **{chosen.format}**: {chosen.note}.")
    types = [AUTO, *TYPES[chosen.format]] + (list(K_QUANTS) if chosen.format == "gguf" else [])
    type_name = st.selectbox("Type", types, key=f"deploy.type.{chosen.format}",
                             format_func=lambda t: "auto: the type that holds the setting's codes" if t == AUTO else t)
    if type_name == AUTO:
        return chosen.format, None, True
    try:
        ftype = format_type(chosen.format, type_name)
    except ConfigError as error:  # k-quants: say why they are not offered
        st.warning(str(error), icon=":material/block:")
        return chosen.format, type_name, False
    st.caption(ftype.description)
    return chosen.format, type_name, True


def typed_setting(fmt: str, type_name: str | None, config: RunConfig | None) -> RunConfig | None:
    """The setting to ship: a type that fixes a memopt setting (GGUF, compressed-tensors, ONNX ``-codes``)
    replaces the quantization of ``config``, and the page says so."""
    if config is None or type_name is None or (fmt == "onnx" and not format_type(fmt, type_name).memopt_codes):
        return config
    quant = setting_for_type(format_type(fmt, type_name), config.quant, {})
    if quant != config.quant:
        label = quant.label if quant is not None else "no quantization"
        st.info(f"**{type_name}** means {label}: that setting is the one compressed and shipped.",
                icon=":material/swap_horiz:")
    return RunConfig(config.model, prune=config.prune, quant=quant, targets=config.targets, eval=config.eval)


def saved_choice() -> str | None:
    """A folder saved by the Compress page or ``run --save`` (None when there is none)."""
    rows = list_saved()
    if not rows:
        st.info("No saved model yet: save one on the Compress page, or ship the current setting.")
        return None
    labels = {row["path"]: f"{row['base model']} · {row['setting']} · {row['size_mib']:.1f} MiB" for row in rows}
    return st.selectbox("Saved model", list(labels), format_func=labels.get, key="deploy.saved")


def export_folder(label: str, fmt: str, type_name: str) -> Path:
    """A new folder under ``<cache>/exports`` named after what it holds."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{label}-{fmt}-{type_name}").strip("-.")[:100]
    return cache_dir() / "exports" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _source(config: RunConfig | None, saved: str | None, evaluation: EvalConfig | None):
    # torch, transformers and the format libraries: imported on the first export only.
    from memopt_core.export.sources import source_from_run, source_from_saved

    if saved is not None:
        return source_from_saved(saved, evaluation)
    return source_from_run(workbench(config.model), config)


def show_plan(config: RunConfig | None, fmt: str, type_name: str | None) -> None:
    """Compress only (no evaluation) and show what each layer becomes in the format."""
    # torch, transformers and the format libraries: imported on the first plan only.
    from memopt_core.export.service import ExportRequest, ExportSource, plan_export

    with user_errors("plan"), st.spinner("Compressing a copy to plan the export ..."):
        bench = workbench(config.model)
        compressed, memory = bench.compress(config)
        source = ExportSource(compressed.model, bench.loaded.tokenizer, bench.loaded.kind, bench.loaded.name, {})
        plan = plan_export(source, ExportRequest(fmt, type_name))
        st.session_state[PLAN] = {"type": plan.type, "layers": [p.to_dict() for p in plan.layers],
                                  "stored_bytes": memory.stored_bytes}


def run_export(config: RunConfig | None, saved: str | None, evaluation: EvalConfig | None, fmt: str,
               type_name: str | None, verify: bool) -> None:
    """Evaluate the setting, write the export under the cache and (optionally) verify it."""
    # torch, transformers and the format libraries: imported on the first export only.
    from memopt_core.export.service import ExportRequest, export

    with st.status("Compressing and evaluating the setting ...", expanded=True) as status, user_errors("export"):
        began = time.perf_counter()
        source = _source(config, saved, evaluation)
        status.update(label=f"Writing {fmt}" + (" and loading it back" if verify else "") + " ...")
        label = source.memopt.get("setting", "model")
        folder = export_folder(f"{source.name}-{label}", fmt, type_name or AUTO)
        report = export(source, ExportRequest(fmt, type_name, verify=verify), folder)
        st.session_state[REPORT] = report.to_dict()
        status.update(label=f"Exported in {time.perf_counter() - began:.1f} s", state="complete", expanded=False)


def layers_table(layers: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per layer: name, what memopt holds, the format's type, how, exact, bits per weight."""
    table = pd.DataFrame(layers, columns=["name", "source", "target", "how", "exact", "bits_per_weight", "bytes", "note"])
    table["bytes"] = table["bytes"].round().astype(int)
    return table.rename(columns={"source": "memopt holds", "target": "becomes", "bits_per_weight": "bpw in format",
                                 "bytes": "bytes in format"})


def show_plan_result(plan: dict[str, Any]) -> None:
    layers = plan["layers"]
    exact = sum(1 for layer in layers if layer["exact"])
    in_format = sum(layer["bytes"] for layer in layers)
    st.markdown(f"**{plan['type']}**: {exact} of {len(layers)} layers keep exactly memopt's weights; their weights "
                f"take {in_format / MIB:,.2f} MiB in the format (embeddings and norms stay as they are); memopt "
                f"holds the whole model in {plan['stored_bytes'] / MIB:,.1f} MiB.")
    if layers:
        st.dataframe(layers_table(layers), hide_index=True, width="stretch")


def _figure(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def show_report(report: dict[str, Any]) -> None:
    """Files and bytes, memopt's figure beside the format loader's, the layers, a download."""
    memopt, trip = report["memopt"], report["roundtrip"] or {}
    cards = st.columns(4)
    cards[0].metric("Files", f"{report['file_bytes'] / MIB:,.1f} MiB",
                    help=f"weights {report['tensor_bytes'] / MIB:,.1f} MiB; the rest is metadata, tokenizer, config")
    cards[1].metric("memopt holds", f"{memopt.get('stored_bytes', 0) / MIB:,.1f} MiB")
    if "perplexity" in memopt:
        cards[2].metric("Perplexity (memopt)", _figure(memopt.get("perplexity"), "{:.3f}"))
        cards[3].metric("Perplexity (format's loader)", _figure(trip.get("perplexity"), "{:.3f}"),
                        delta=None if trip.get("perplexity") is None else
                        f"{(trip['perplexity'] - memopt['perplexity']) / memopt['perplexity']:+.2%}", delta_color="off")
    else:
        cards[2].metric("Cosine to original", _figure(trip.get("cosine_to_original"), "{:.4f}"))
        cards[3].metric("Cosine to memopt's", _figure(trip.get("cosine_to_memopt"), "{:.4f}"))
    if trip:
        st.caption(f"Round trip: {trip['loader']} · max |weight - memopt's| "
                   f"{_figure(trip.get('max_abs_weight_error'), '{:.3g}')} · "
                   f"{_figure(trip.get('tokens_per_second'), '{:,.0f}')} tokens/s"
                   + (f" (PyTorch dense fp32: {memopt['pytorch_dense_fp32_tokens_per_second']:,.0f})"
                      if memopt.get("pytorch_dense_fp32_tokens_per_second") else ""))
    for note in report["notes"]:
        st.caption(f"Note: {note}")
    if report["layers"]:
        st.dataframe(layers_table(report["layers"]), hide_index=True, width="stretch")
    st.dataframe(pd.DataFrame(report["files"]), hide_index=True, width="stretch")
    _download(report)


def _download(report: dict[str, Any]) -> None:
    folder = Path(report["folder"])
    if report["format"] == "gguf":
        path = folder / "model.gguf"
        st.download_button("Download model.gguf", path.read_bytes(), file_name=f"{folder.name}.gguf",
                           key="deploy.download", icon=":material/download:")
    else:
        st.download_button("Download the folder (zip)", zip_folder(folder), file_name=f"{folder.name}.zip",
                           key="deploy.download", icon=":material/download:")


def show_support_table() -> None:
    st.dataframe(pd.DataFrame(support_table()), hide_index=True, width="stretch")


def current_setting(spec: ModelSpec | None, evaluation: EvalConfig | None, prune, quant) -> RunConfig | None:
    if spec is None or evaluation is None:
        return None
    return RunConfig(model=spec, prune=prune, quant=quant, eval=evaluation)
