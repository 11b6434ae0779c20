"""Plain-text summary of an export for the terminal (``export`` without ``--json``)."""
from __future__ import annotations

from collections import Counter
from typing import Any

MIB = 2**20


def _pct(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return ""
    return f" ({(value - reference) / reference:+.2%} vs memopt)"


def _quality_lines(memopt: dict[str, Any], roundtrip: dict[str, Any] | None) -> list[str]:
    lines = []
    if "perplexity" in memopt:
        lines.append(f"memopt perplexity {memopt['perplexity']:.3f} ({memopt.get('setting', '')})")
    if roundtrip is None:
        return lines + ["round trip: not run (add --verify)"]
    lines.append(f"round trip via {roundtrip['loader']}")
    if roundtrip.get("perplexity") is not None:
        lines.append(f"  perplexity {roundtrip['perplexity']:.3f}{_pct(roundtrip['perplexity'], memopt.get('perplexity'))}")
    if roundtrip.get("max_abs_weight_error") is not None:
        lines.append(f"  max |weight - memopt's| {roundtrip['max_abs_weight_error']:.3g}")
    if roundtrip.get("tokens_per_second") is not None:
        dense = memopt.get("pytorch_dense_fp32_tokens_per_second")
        ratio = f" ({roundtrip['tokens_per_second'] / dense:.2f}x PyTorch dense fp32 {dense:,.0f})" if dense else ""
        lines.append(f"  {roundtrip['tokens_per_second']:,.0f} tokens/s{ratio}")
    for key in ("cosine_to_original", "cosine_to_memopt"):
        if roundtrip.get(key) is not None:
            lines.append(f"  {key.replace('_', ' ')} {roundtrip[key]:.4f}")
    return lines


def format_export(report: dict[str, Any]) -> str:
    """Where the files went, what each layer became, and the round-trip figures."""
    lines = [f"exported {report['format']} {report['type']} to {report['folder']} "
             f"({report['file_bytes'] / MIB:,.1f} MiB in {len(report['files'])} files, weights "
             f"{report['tensor_bytes'] / MIB:,.1f} MiB; memopt holds {report['memopt'].get('stored_bytes', 0) / MIB:,.1f} MiB)"]
    if report["layers"]:
        fates = Counter(f"{layer['source']} -> {layer['target']} ({layer['how']})" for layer in report["layers"])
        lines.append(f"layers: {report['layers_exact']} exactly memopt's weights")
        lines += [f"  {count} x {fate}" for fate, count in fates.items()]
    lines += _quality_lines(report["memopt"], report["roundtrip"])
    lines += [f"note: {note}" for note in report["notes"]]
    return "\n".join(lines)
