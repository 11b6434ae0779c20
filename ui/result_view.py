"""One run's result on screen: quality cards with the change, memory cards, per-layer charts,
generations side by side and the notes. Reads ``RunResult.to_dict()`` only."""
from __future__ import annotations

import math
from typing import Any

import streamlit as st

from memopt_core import charts
from memopt_core.config import RunConfig
from memopt_core.runs.rows import calibration_label
from ui.chart_glue import saving_phrase, show_chart


def gib(n_bytes: float | None, unit: bool = True) -> str:
    """Binary GiB with enough digits for tiny models too (0.0120 GiB, 12.3 GiB)."""
    if n_bytes is None:
        return "-"
    value = n_bytes / 2**30
    text = f"{value:.2f}" if value >= 1 else f"{value:.3g}"
    return f"{text} GiB" if unit else text


def _number(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf (diverged)"
    return pattern.format(value)


def _delta(after: Any, before: Any, pattern: str) -> str | None:
    if after is None or before is None or not all(math.isfinite(float(v)) for v in (after, before)):
        return None
    return pattern.format(after - before)


def _ci(source: dict) -> str:
    return f"95% CI {source['ci_low']:.1%} to {source['ci_high']:.1%}"


def _causal_cards(base: dict, comp: dict) -> list[tuple]:
    cards = [("Perplexity, original", _number(base.get("perplexity"), "{:.3f}"), None, "off",
              "exp(mean token NLL) over non-overlapping windows; lower is better"),
             ("Perplexity, compressed", _number(comp.get("perplexity"), "{:.3f}"),
              _delta(comp.get("perplexity"), base.get("perplexity"), "{:+.3f}"), "inverse", "change from the original"),
             ("KL from original", _number(comp.get("kl_divergence"), "{:.3g}"), None, "off",
              f"nats per token, next-token distributions ({comp.get('kl_method') or 'exact'}); 0 = identical"),
             ("Top-1 agreement", _number(comp.get("top1_agreement"), "{:.1%}"),
              _delta(comp.get("top1_agreement"), 1.0, "{:+.1%}"), "normal",
              "how often the compressed model's most likely next token is the original's")]
    if comp.get("zero_shot") and base.get("zero_shot"):
        after, before = comp["zero_shot"], base["zero_shot"]
        cards.append(("Zero-shot sentiment", f"{after['accuracy']:.1%}",
                      _delta(after["accuracy"], before["accuracy"], "{:+.1%}"), "normal",
                      f"{_ci(after)}; original {before['accuracy']:.1%} ({_ci(before)}), n={after['n']}"))
    return cards


def _encoder_cards(base: dict, comp: dict) -> list[tuple]:
    cards = [("Cosine similarity to original", _number(comp.get("cosine_similarity"), "{:.4f}"),
              _delta(comp.get("cosine_similarity"), 1.0, "{:+.4f}"), "normal",
              "mean cosine between the compressed and original sentence embeddings; 1 = identical")]
    for label, source, delta in (("Accuracy, original", base, None),
                                 ("Accuracy, compressed", comp, _delta(comp.get("accuracy"), base.get("accuracy"),
                                                                       "{:+.1%}"))):
        if source.get("accuracy") is not None:
            cards.append((label, f"{source['accuracy']:.1%}", delta, "normal",
                          f"logistic head on the original's embeddings, {_ci(source)}"))
    return cards


def show_quality(result: dict) -> None:
    base, comp = result["baseline"], result["compressed"]
    st.subheader("Quality: original vs compressed")
    cards = _causal_cards(base, comp) if result["model"]["kind"] == "causal-lm" else _encoder_cards(base, comp)
    for column, (label, value, delta, colour, help_text) in zip(st.columns(len(cards)), cards):
        column.metric(label, value, delta=delta, delta_color=colour, help=help_text, border=True)
    if comp.get("diverged"):
        st.warning(f"The compressed model diverged: {comp.get('reason') or 'non-finite loss'}")
    if result["model"]["kind"] != "causal-lm":
        st.caption("Accuracy on 100 test sentences moves within its own noise (about +-5 points): rank settings "
                   "by cosine similarity and read accuracy with its interval.")


def show_memory(result: dict) -> None:
    memory = result["memory"]
    st.subheader("Memory")
    cards = [("Dense (GiB)", gib(memory["dense_bytes"], unit=False),
              "every tensor of the original, as loaded"),
             ("Stored (GiB)", gib(memory["stored_bytes"], unit=False),
              "the compressed copy: bytes of the tensors it really holds (codes, scales, masks, the rest)"),
             ("Measured (GiB)", gib(memory.get("measured_bytes"), unit=False),
              f"memory the compressed copy took when it was built: {memory.get('measured_method') or '-'}"),
             ("Bits per weight", f"{memory['bits_per_weight']:.3f}",
              f"targeted layers, scales and zero points included; {memory['dense_bits_per_weight']:.0f} before"),
             ("Smaller by", f"{memory['ratio']:.2f}x", "dense bytes / stored bytes of the whole model")]
    # GiB are binary (2**30 bytes), as DESIGN.md asks; the unit sits in the label so values fit the cards.
    for column, (label, value, help_text) in zip(st.columns(len(cards)), cards):
        column.metric(label, value, help=help_text, border=True)
    st.caption(f"Whole-model sizes (embeddings and other untargeted tensors included); {saving_phrase(result)}.")


def show_layer_charts(result: dict, key: str) -> None:
    layers = result["layers"]
    phrase = saving_phrase(result)
    show_chart(charts.sparsity_by_layer(layers), "Share of exact zeros in each targeted layer, counted from the "
               f"weights the model computes with; {phrase}.", key=f"{key}.sparsity")
    show_chart(charts.bytes_by_layer(layers), f"Bytes each targeted layer's weight takes before and after; {phrase}.",
               key=f"{key}.bytes")


def show_generation(result: dict) -> None:
    base, comp = result["baseline"].get("generation"), result["compressed"].get("generation")
    if not base or not comp:
        return
    st.subheader("Greedy generation")
    st.caption(f"Prompt: {base['prompt']!r}; the same number of tokens, greedy decoding.")
    left, right = st.columns(2)
    left.markdown("**Original**")
    left.code(base["prompt"] + base["text"], language=None, wrap_lines=True)
    right.markdown("**Compressed**")
    right.code(comp["prompt"] + comp["text"], language=None, wrap_lines=True)


def show_notes(result: dict) -> None:
    for note in result.get("notes", []):
        st.info(note, icon=":material/info:")


def show_protocol(result: dict) -> None:
    with st.expander("Protocol and timings"):
        st.json({"protocol": result["protocol"], "timings": result["timings"], "model": result["model"]},
                expanded=False)


def setting_of(result: dict) -> str:
    """The setting's label, e.g. 'magnitude 50% + W4A16 g128 sym' or 'uncompressed'; a calibrated
    one names its calibration data: 'GPTQ W4A16 per-channel sym · calibrated on both 64x512 seed 0'."""
    config = RunConfig.from_dict(result["config"])
    calibration = result.get("protocol", {}).get("calibration")
    suffix = f" · calibrated on {calibration_label(calibration)}" if calibration else ""
    return config.label + suffix
