"""The Trade-offs page's parts: grid widgets, a sweep run with live progress, the results."""
from __future__ import annotations

import os
from typing import Any

import pandas as pd
import streamlit as st

from memopt_core import charts
from memopt_core.config import PRUNE_METHODS, ClusterConfig, EvalConfig, ModelSpec, RunConfig
from memopt_core.recovery.stored import recovered_results
from memopt_core.runs.pareto import mark_pareto
from memopt_core.runs.ray_executor import RayExecutor
from memopt_core.runs.rows import result_row
from memopt_core.runs.sweep import SweepGrid, run_sweep
from ui.chart_glue import show_chart, table_saving_phrase
from ui.loaders import loader, result_store
from ui.vocabulary import KEEP, SCALE_CHOICES, group_label

SWEEP = "tradeoffs.result"  # {"table": DataFrame, "name", "computed", "from_store", "seconds", "cancelled"}
RATIOS = (0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95)
BITS = (2, 3, 4, 5, 6, 8, 16, "fp16", "bf16")
QUANTIZERS = {"rtn": "round to nearest", "gptq": "GPTQ (calibration)"}
PLACES = {"local": "this server", "ray": "a Ray cluster"}
ADDRESS_ENV = "MEMOPT_RAY_ADDRESS"  # the cluster this dashboard's operator configured, if any
TABLE_COLUMNS = ("setting", "perplexity", "kl_divergence", "top1_agreement", "cosine_similarity", "accuracy",
                 "stored_mib", "bits_per_weight", "x_smaller", "sparsity", "simulated", "calibration", "recovery",
                 "pareto")


def grid_settings(where=st) -> SweepGrid:
    """Multiselects for each axis -> a SweepGrid (ConfigError for an empty axis or a bad combination)."""
    first, second = where.columns(2)
    methods = first.multiselect("Prune methods", [*PRUNE_METHODS, "2:4", "4:8"], default=["magnitude"],
                                key="sweep.methods", persist_state=KEEP,
                                help="2:4 and 4:8 are magnitude N:M; they ignore the ratios.")
    ratios = first.multiselect("Prune ratios", RATIOS, default=[0.0, 0.5], format_func=lambda r: f"{r:.0%}",
                               key="sweep.ratios", persist_state=KEEP, help="0% = not pruned.")
    bits = second.multiselect("Bit widths", BITS, default=[16, 8, 4], key="sweep.bits", persist_state=KEEP,
                              format_func=lambda b: "16 (none)" if b == 16 else str(b))
    groups = second.multiselect("Scale per", SCALE_CHOICES, default=[128], key="sweep.groups", persist_state=KEEP,
                                format_func=group_label)
    quantizers = second.multiselect("Quantizers", QUANTIZERS, default=["rtn"], key="sweep.quantizers",
                                    persist_state=KEEP, format_func=QUANTIZERS.get,
                                    help="GPTQ calibrates on 64 x 512 tokens of both bundled texts (never the "
                                         "evaluated ones): minutes per setting on SmolLM2 on a CPU.")
    symmetric = where.radio("Grid", ["symmetric", "asymmetric"], horizontal=True, key="sweep.symmetric",
                            persist_state=KEEP) == "symmetric"
    options = {"symmetric": symmetric} if symmetric else {"symmetric": False, "zero_point": "int"}
    return SweepGrid(prune_methods=tuple(methods), prune_ratios=tuple(sorted(ratios)),
                     bits=tuple(bits), group_sizes=tuple(None if g == "per-channel" else g for g in groups),
                     quant_methods=tuple(quantizers), quant_options=options)


def executor_settings(where=st) -> RayExecutor | None:
    """Where the sweep runs: None for this server, or a RayExecutor for the cluster at the address
    (default ``$MEMOPT_RAY_ADDRESS``; empty: a local cluster reachable from this machine only)."""
    place = where.radio("Run on", list(PLACES), format_func=PLACES.get, horizontal=True, key="sweep.executor",
                        persist_state=KEEP, help="A Ray cluster runs several settings at once, each worker "
                        "loading the model once; every result goes to the same results store as it finishes.")
    if place == "local":
        return None
    first, second, third = where.columns(3)
    address = first.text_input("Cluster address", value=os.environ.get(ADDRESS_ENV, ""), key="sweep.ray_address",
                               persist_state=KEEP, placeholder="empty: a local cluster on this machine",
                               help="host:port, ray://host:port or auto. Its workers need the results database "
                                    "on a disk they share with this server (see the README).")
    workers = second.number_input("Workers", min_value=1, max_value=512, value=2, key="sweep.ray_workers",
                                  persist_state=KEEP, help="Processes, each loading the model once.")
    cpus = third.number_input("CPUs per worker", min_value=1, max_value=256, value=1, key="sweep.ray_cpus",
                              persist_state=KEEP, help="Each worker computes with as many threads.")
    return RayExecutor(ClusterConfig(address.strip() or None, int(workers), int(cpus)))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "time left: estimating after the first computed setting"
    return f"about {seconds:.0f} s left" if seconds < 120 else f"about {seconds / 60:.1f} min left"


def run_grid(spec: ModelSpec, grid: SweepGrid, evaluation: EvalConfig, name: str,
             executor: RayExecutor | None = None) -> None:
    """Run the sweep (here, or on ``executor``'s cluster) with an ``st.progress`` bar naming the
    running settings and the time left; finished settings are counted from every worker."""
    bar = st.progress(0.0, text="Starting ...")

    def progress(done: int, total: int, label: str, seconds_left: float | None) -> None:
        if label == "done":
            bar.progress(1.0, text=f"{total} of {total} settings done")
            return
        bar.progress(done / total, text=f"{done} of {total} done · now: {label} · {_duration(seconds_left)}")

    result = run_sweep(spec, grid, evaluation, store=result_store(), progress=progress, sweep_name=name,
                       load=loader() if executor is None else None, executor=executor)
    where = "here" if executor is None else f"on {executor.workers} Ray worker{'s' * (executor.workers > 1)}"
    configs = [RunConfig(model=spec, prune=p, quant=q, eval=evaluation) for p, q in grid.settings()]
    st.session_state[SWEEP] = {"table": result.table, "name": name, "computed": result.computed,
                               "from_store": result.from_store, "seconds": result.seconds,
                               "cancelled": result.cancelled, "where": where, "configs": configs}


def with_recovered(sweep: dict[str, Any]) -> pd.DataFrame:
    """The sweep's rows plus the stored recovered runs of its settings ('+ recovery N steps'), the
    Pareto front marked over both: recovery keeps the bytes, so its points compete on quality."""
    found = recovered_results(result_store(), sweep.get("configs", []))
    if not found:
        return sweep["table"]
    rows = [result_row(result, label=label, key=key) for key, label, result in found]
    table = pd.concat([sweep["table"].drop(columns="pareto"), pd.DataFrame(rows)], ignore_index=True)
    return mark_pareto(table)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader needs, stored size in MiB, ordered by size."""
    frame = table.assign(stored_mib=table["stored_bytes"] / 2**20)
    return frame[[c for c in TABLE_COLUMNS if c in frame]].sort_values("stored_mib", ignore_index=True)


def show_sweep(sweep: dict[str, Any]) -> None:
    table = with_recovered(sweep)
    recovered = len(table) - len(sweep["table"])
    extra = f" Shown with {recovered} recovered runs of these settings (Recovery page)." if recovered else ""
    st.success(f"Sweep {sweep['name']!r}: {len(sweep['table'])} settings, {sweep['computed']} computed "
               f"{sweep.get('where', 'here')} and {sweep['from_store']} from the results store, "
               f"in {sweep['seconds']:.1f} s.{extra}")
    if table.empty:
        return
    phrase = table_saving_phrase(table)
    st.dataframe(display_table(table), hide_index=True,
                 column_config={"stored_mib": st.column_config.NumberColumn("stored (MiB)", format="%.2f"),
                                "sparsity": st.column_config.NumberColumn(format="percent"),
                                "top1_agreement": st.column_config.NumberColumn(format="percent")})
    st.download_button("Download CSV", table.to_csv(index=False), file_name=f"{sweep['name']}.csv",
                       mime="text/csv", key="tradeoffs.csv", icon=":material/download:")
    show_chart(charts.tradeoff_memory(table), "Quality against stored size, one line per pruning setting (and "
               "calibrated quantizer); stars mark the Pareto front (nothing is both smaller and better); hover a "
               f"point for all its figures; {phrase}.", key="tradeoffs.memory")
    show_chart(charts.quality_vs_bits(table), "Quality against bit width, one line per pruning setting (and "
               f"calibrated quantizer); {phrase}.", key="tradeoffs.bits")
    show_chart(charts.ratio_bits_heatmap(table), "Quality for each pruning setting and bit width (mean over "
               f"group sizes); blank cells were not run or diverged; {phrase}.", key="tradeoffs.heatmap")
