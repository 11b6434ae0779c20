"""Plain-text summaries of results for the terminal."""
from __future__ import annotations

from typing import Any

from memopt_core.units import format_gib

_QUALITY_KEYS = (("perplexity", "perplexity", "{:.3f}"), ("top1_accuracy", "next-token top-1", "{:.3f}"),
                 ("kl_divergence", "KL from original", "{:.4f}"), ("top1_agreement", "top-1 agreement", "{:.3f}"),
                 ("cosine_similarity", "cosine to original", "{:.4f}"), ("accuracy", "accuracy", "{:.3f}"))


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def quality_lines(baseline: dict, compressed: dict) -> list[str]:
    lines = [f"  {'':22}{'baseline':>14}{'compressed':>14}"]
    for key, label, pattern in _QUALITY_KEYS:
        if key in baseline or key in compressed:
            lines.append(f"  {label:22}{_fmt(baseline.get(key), pattern):>14}{_fmt(compressed.get(key), pattern):>14}")
    for name, source in (("baseline", baseline), ("compressed", compressed)):
        zero_shot = source.get("zero_shot")
        if zero_shot:
            lines.append(f"  zero-shot sentiment ({name}): {zero_shot['accuracy']:.3f} "
                         f"[95% CI {zero_shot['ci_low']:.3f}-{zero_shot['ci_high']:.3f}], n={zero_shot['n']}")
    return lines


def format_run(result) -> str:
    """A short human report of a :class:`memopt_core.runs.workbench.RunResult`."""
    memory = result.memory
    config = result.config
    setting = " + ".join(x.label for x in (config.prune, config.quant) if x is not None) or "no compression"
    lines = [f"model: {result.model['label']} ({result.model['params']:,} params, {result.model['kind']})",
             f"setting: {setting}", "quality:", *quality_lines(result.baseline, result.compressed),
             "memory:",
             f"  dense {format_gib(memory.dense_bytes)}, stored {format_gib(memory.stored_bytes)} "
             f"({memory.ratio:.2f}x smaller), targeted layers {memory.bits_per_weight:.3f} bits/weight",
             f"  measured: {format_gib(memory.measured_bytes or 0)} ({memory.measured_method})",
             f"sparsity of targeted layers: {result.sparsity:.2%}"]
    generation = result.compressed.get("generation")
    if generation:
        lines.append(f"generation: {generation['prompt']!r} -> {generation['text']!r}")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)
