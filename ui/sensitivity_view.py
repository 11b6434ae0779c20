"""The Sensitivity page's parts: settings, a sensitivity measurement and a mixed-precision plan run
with live progress, and their results. Results live in this browser session's state."""
from __future__ import annotations

import json
import math
from typing import Any, Callable

import pandas as pd
import streamlit as st

from memopt_core.config import MAX_PRUNE_RATIO, EvalConfig, ModelSpec, PruneConfig, QuantConfig
from memopt_core.mixed.charts import loss_name, plan_bits_chart, sensitivity_bars
from ui.chart_glue import show_chart
from ui.loaders import is_loaded, workbench
from ui.vocabulary import KEEP, SCALE_CHOICES, group_label

RANKING = "sensitivity.ranking"  # {"model": label, "result": SensitivityResult.to_dict()}
PLAN = "sensitivity.plan"  # {"model": label, "comparison": PlanComparison.to_dict()}
PROBE_TOKENS = (256, 512, 1024, 2048, 4096)


def unit_settings(where=st) -> tuple[QuantConfig, PruneConfig | None, str, int]:
    """(RTN quantization, optional magnitude pruning, unit, probe tokens) from the page's widgets."""
    first, second = where.columns(2)
    bits = first.select_slider("Bit width", (2, 3, 4, 5, 6, 8), value=4, key="sens.bits", persist_state=KEEP,
                               help="Round-to-nearest bits for the unit under test; the plan's base width.")
    group = first.selectbox("Scale per", SCALE_CHOICES, key="sens.group", persist_state=KEEP,
                            format_func=group_label)
    ratio = first.slider("Magnitude prune ratio (ranking only)", 0.0, MAX_PRUNE_RATIO, 0.0, 0.05, key="sens.ratio",
                         persist_state=KEEP, help="Also prune the unit under test; the plan quantizes only.")
    by = second.radio("Unit compressed at a time", ["block", "layer"], horizontal=True, key="sens.by",
                      persist_state=KEEP, help="A block is every targeted layer of one transformer block: "
                                               "fewer, faster probes. A layer ranks single projections.")
    tokens = second.select_slider("Tokens scored per probe", PROBE_TOKENS, value=1024, key="sens.tokens",
                                  persist_state=KEEP, help="Each unit is scored on the first this many tokens "
                                                           "of the evaluation text: more is steadier and slower.")
    grain = {"granularity": "group", "group_size": group} if isinstance(group, int) else {}
    quant = QuantConfig(bits=bits, **grain)
    prune = PruneConfig("magnitude", float(ratio)) if ratio > 0 else None
    return quant, prune, by, tokens


def _start(spec: ModelSpec, evaluation: EvalConfig, tokens: int):
    """(progress bar, shared workbench, probe scored on the original), the bar naming each step."""
    # The engine's model code (torch + transformers, seconds to import) loads when a user first
    # measures, not when the page opens; the same holds for the two functions below.
    from memopt_core.mixed.sensitivity import QualityProbe

    bar = st.progress(0.0, text="Starting ...")
    if not is_loaded(spec):
        bar.progress(0.0, text=f"Loading {spec.source} (once; later runs reuse it)")
    bench = workbench(spec)
    bar.progress(0.0, text="Scoring the original on the probe tokens")
    probe = QualityProbe(bench.loaded, EvalConfig(text=evaluation.text, seq_len=min(evaluation.seq_len, tokens),
                                                  max_tokens=tokens, gen_tokens=0, zero_shot=False))
    return bar, bench, probe


def _bar_progress(bar) -> Callable[[int, int, str], None]:
    def progress(done: int, total: int, unit: str) -> None:
        if unit != "done":
            bar.progress(done / max(total, 1), text=f"{done} of {total} probes · now: {unit}")
    return progress


def measure(spec: ModelSpec, evaluation: EvalConfig, quant: QuantConfig, prune: PruneConfig | None, by: str,
            tokens: int) -> None:
    from memopt_core.mixed.sensitivity import measure_sensitivity

    bar, bench, probe = _start(spec, evaluation, tokens)
    result = measure_sensitivity(bench, quant, prune, by=by, probe=probe, progress=_bar_progress(bar))
    bar.progress(1.0, text=f"{len(result.rows)} units measured in {result.seconds:.1f} s")
    st.session_state[RANKING] = {"model": bench.loaded.label, "result": result.to_dict()}


def plan(spec: ModelSpec, evaluation: EvalConfig, base: QuantConfig, budget: float, by: str, tokens: int) -> None:
    from memopt_core.mixed.around_uniform import plan_and_compare

    bar, bench, probe = _start(spec, evaluation, tokens)
    comparison = plan_and_compare(bench, base, budget, by=by, probe=probe, progress=_bar_progress(bar))
    bar.progress(1.0, text="Plan applied and measured")
    st.session_state[PLAN] = {"model": bench.loaded.label, "comparison": comparison.to_dict()}


def ranking_table(result: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(result["rows"])
    frame["layers"] = frame["layers"].map(len)
    return frame[["unit", "delta", "kl", "params", "layers", "seconds"]]


def show_ranking(shown: dict[str, Any]) -> None:
    result = shown["result"]
    st.subheader(f"{shown['model']}: {result['setting']}, one {result['by']} at a time")
    what = "KL divergence to the original's next-token predictions" if loss_name(result) == "kl" else \
        "drop of the mean cosine similarity to the original's sentence embeddings"
    show_chart(sensitivity_bars(result), f"Quality lost when only that {result['by']} is compressed: the {what}, "
               f"on {result['protocol'].get('tokens', result['protocol'].get('sentences'))} probe "
               f"{'tokens' if 'tokens' in result['protocol'] else 'sentences'}. Longer bars are more sensitive. "
               "No memory is saved here: each probe compresses one unit of a copy.", key="sens.chart")
    st.dataframe(ranking_table(result), hide_index=True,
                 column_config={"delta": st.column_config.NumberColumn("metric change", format="%+.5f"),
                                "kl": st.column_config.NumberColumn("KL", format="%.5f"),
                                "params": st.column_config.NumberColumn("weights", format="localized")})
    st.caption(f"Measured in {result['seconds']:.1f} s. Protocol: {result['protocol']}.")


def _perplexity(outcome: dict[str, Any], key: str) -> str:
    value = outcome.get(key)
    return "-" if value is None else ("inf" if not math.isfinite(value) else f"{value:.2f}")


def show_plan(shown: dict[str, Any]) -> None:
    comparison = shown["comparison"]
    plan_dict, outcome, uniform = comparison["plan"], comparison["outcome"], comparison["uniform"]
    bits = plan_dict["base"]["bits"]
    st.subheader(f"{shown['model']}: mixed precision at <= {plan_dict['budget_bpw']:.3f} bits per weight")
    show_chart(plan_bits_chart(plan_dict), "Bit width chosen for each unit (2 and 3 bits where the model barely "
               "notices, 8 where it hurts most). The saving is real: each layer is stored packed at its own "
               "width, fp16 scales counted.", key="sens.plan")
    columns = st.columns(3)
    quality = "perplexity" if outcome["metric"] == "nll" else "cosine"
    for column, (name, result) in zip(columns, (("plan", outcome), (f"uniform {bits}-bit", uniform))):
        value = _perplexity(result, "measured_perplexity") if quality == "perplexity" else \
            f"{result['measured_score']:.4f}"
        column.metric(f"{name}: {quality}", value, help=f"{result['loss']} {result['measured_loss']:.4f} measured, "
                                                          f"{result['predicted_loss']:.4f} predicted")
        column.caption(f"{result['bits_per_weight']:.3f} bits per weight · {result['stored_weight_bytes']:,} bytes "
                       f"of targeted weights · predicted {quality} {_perplexity(result, 'predicted_perplexity')}")
    columns[2].metric("original", _perplexity(outcome, "baseline_perplexity") if quality == "perplexity" else "1.0")
    st.caption(f"Predicted = the loss of uniform {bits}-bit plus, for each unit, the change measured when only "
               "that unit moves to its planned width in the uniform model (5 and 6 bits are interpolated "
               "between the base and 8 bits by the weight error they remove). Measured = the whole plan applied "
               "to a copy and scored on the same probe tokens; the gap shows how far the additive model holds.")
    st.download_button("Download the plan (JSON)", json.dumps(comparison, indent=2, default=str),
                       file_name="mixed_precision_plan.json", mime="application/json", key="sens.download",
                       icon=":material/download:")
