"""The Memory planner's parts: where the config comes from, the plan sliders, the estimate.
Nothing here loads weights: configs are read as JSON and counted on the meta device."""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from memopt_core import charts
from memopt_core.config import ModelSpec
from memopt_core.planning import planner
from ui.chart_glue import show_chart
from ui.loaders import is_loaded, workbench
from ui.result_view import gib
from ui.uploads import read_config_upload
from ui.vocabulary import KEEP, SCALE_CHOICES, group_label

SOURCES = {"preset": "A well-known model (preset)", "upload": "Upload a config.json",
           "compress": "The model picked on the Compress page"}
BASE_BYTES = {4: "float32", 2: "16-bit (fp16 / bf16)", 1: "8-bit"}
CONTEXTS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


def _preset_config() -> tuple[Any, str]:
    names = planner.list_presets()
    name = st.selectbox("Preset", names, index=names.index("llama-3-8b") if "llama-3-8b" in names else 0,
                        key="planner.preset", persist_state=KEEP,
                        format_func=lambda n: planner.preset_info(n).get("title", n))
    info = planner.preset_info(name)
    published = info.get("published_params")
    st.caption(f"{info.get('title', name)} ({info.get('hub_id', '')})"
               + (f", {published:,} parameters published" if published else ""))
    return planner.load_preset(name), info.get("title", name)


def _uploaded_config() -> tuple[Any, str] | None:
    upload = st.file_uploader("config.json of any transformers model", type=["json"], key="planner.upload")
    if upload is None:
        st.info("Upload a config.json (no weights needed).")
        return None
    return planner.load_config(read_config_upload(upload.name, upload.getvalue())), upload.name


def compress_page_spec() -> ModelSpec:
    """The model, device and dtype the Compress page's widgets hold now (defaults if never shown)."""
    state = st.session_state
    source = state.get("model.choice", "smollm2-135m")
    if source == "other":
        source = state.get("model.custom", "") or "smollm2-135m"
    return ModelSpec(source=source, device=state.get("model.device", "cpu"), dtype=state.get("model.dtype", "float32"))


def _compress_model_config() -> tuple[Any, str] | None:
    spec = compress_page_spec()
    if spec.source in planner.list_presets():
        return planner.load_preset(spec.source), spec.source
    if is_loaded(spec):
        return workbench(spec).loaded.model.config, spec.source
    if spec.origin == "local":
        return planner.load_config(spec.source), spec.source
    st.info(f"{spec.source} is not loaded, and its config cannot be read without it: run it once on the "
            "Compress page, or upload its config.json.")
    return None


def config_source() -> tuple[Any, str] | None:
    """(a config for planner.estimate, its display name), or None while there is none."""
    source = st.radio("Model", list(SOURCES), format_func=SOURCES.get, horizontal=True, key="planner.source",
                      persist_state=KEEP)
    if source == "preset":
        return _preset_config()
    if source == "upload":
        return _uploaded_config()
    return _compress_model_config()


def plan_settings() -> planner.PlanConfig:
    first, second, third = st.columns(3)
    bits = first.select_slider("Weight bits", planner.PLAN_BITS, value=4, key="planner.bits", persist_state=KEEP,
                               format_func=lambda b: "16 (none)" if b == 16 else str(b))
    group = first.selectbox("Scale per", SCALE_CHOICES, index=3, key="planner.group", persist_state=KEEP,
                            format_func=group_label)
    symmetric = first.radio("Grid", ["symmetric", "asymmetric"], horizontal=True, key="planner.symmetric",
                            persist_state=KEEP) == "symmetric"
    sparsity = second.slider("Sparsity", 0.0, planner.MAX_SPARSITY, 0.0, 0.05, key="planner.sparsity",
                             persist_state=KEEP, format="%.2f")
    sparse_format = second.radio("Sparse storage", planner.SPARSITY_FORMATS, horizontal=True,
                                 key="planner.sparse_format", persist_state=KEEP,
                                 help="dense stores the zeros (no saving); bitmask stores 1 bit per weight "
                                      "plus the non-zero values")
    base = second.radio("Everything else in", list(BASE_BYTES), index=1, format_func=BASE_BYTES.get,
                        key="planner.base", persist_state=KEEP, help="embeddings, norms, lm_head, biases")
    context = third.select_slider("Context length (tokens)", CONTEXTS, value=4096, key="planner.context",
                                  persist_state=KEEP)
    batch = third.number_input("Batch", 1, 1024, 1, key="planner.batch", persist_state=KEEP)
    kv_bits = third.radio("KV-cache precision (bits)", planner.KV_BITS, horizontal=True, key="planner.kv_bits",
                          persist_state=KEEP)
    return planner.PlanConfig(bits=bits, group_size=None if group == "per-channel" else group, symmetric=symmetric,
                              sparsity=float(sparsity), sparsity_format=sparse_format, context=int(context),
                              batch=int(batch), kv_bits=kv_bits, base_dtype_bytes=base)


def fits_table(total_bytes: int) -> pd.DataFrame:
    rows = planner.fits_on(total_bytes)
    return pd.DataFrame({"memory": [r["name"] for r in rows], "capacity": [gib(r["capacity_bytes"]) for r in rows],
                         "fits": ["yes" if r["fits"] else "no" for r in rows],
                         "headroom": [gib(r["headroom_bytes"]) if r["fits"] else "-" + gib(-r["headroom_bytes"])
                                      for r in rows]})


def show_estimate(estimate: dict[str, Any], name: str) -> None:
    st.subheader(f"{name}: {estimate['plan']['label']}")
    cards = [("Total (GiB)", gib(estimate["total_bytes"], unit=False)),
             ("Weights (GiB)", gib(estimate["weights_bytes"], unit=False)),
             ("KV cache (GiB)", gib(estimate["kv_cache_bytes"], unit=False)),
             ("Activations, rough (GiB)", gib(estimate["activation_bytes"], unit=False)),
             ("Bits per weight", f"{estimate['bits_per_weight']:.3f}"),
             ("Parameters", f"{estimate['params'] / 1e9:.3g} B")]
    for column, (label, value) in zip(st.columns(len(cards)), cards):
        column.metric(label, value, border=True)
    left, right = st.columns([2, 3])
    with left:
        show_chart(charts.memory_stack(estimate), "Theoretical memory of the tensors (no framework overhead): "
                   "weights at the chosen precision, KV cache for the context and batch, one forward pass of "
                   "activations.", key="planner.stack")
    with right:
        st.markdown("**Does it fit?**")
        st.dataframe(fits_table(estimate["total_bytes"]), hide_index=True)
        with st.expander("Assumptions"):
            st.markdown("\n".join(f"- {note}" for note in estimate["notes"]))
