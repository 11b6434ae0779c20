"""Flat rows from run results, for tables, charts and CSV. Pure: dicts in, dicts out."""
from __future__ import annotations

from typing import Any

# model kind -> (the metric that ranks settings, whether higher is better)
QUALITY_METRIC = {"causal-lm": ("perplexity", False), "encoder": ("cosine_similarity", True),
                  "sequence-classifier": ("accuracy", True)}

_COMPRESSED_METRICS = ("perplexity", "top1_accuracy", "kl_divergence", "top1_agreement", "cosine_similarity",
                       "accuracy", "diverged")


def calibration_label(calibration: dict[str, Any]) -> str:
    """'both 64x512 seed 0': the calibration data (a run protocol's ``calibration``), shown beside
    every calibrated result."""
    return f"{calibration['text']} {calibration['samples']}x{calibration['seq_len']} seed {calibration['seed']}"


def recovery_fields(recovery: dict[str, Any] | None) -> dict[str, Any]:
    """``recovery_steps`` (steps trained, None when not recovered) and a one-line ``recovery`` summary
    of a recovered run (``memopt_core.recovery``): steps, tokens, seconds, training text."""
    if not recovery:
        return {"recovery_steps": None, "recovery": None}
    summary = (f"{recovery['steps_done']} of {recovery['steps']} steps, {recovery['tokens']:,} tokens of "
               f"{recovery['data']['text']}, {recovery['seconds']:.0f} s ({recovery['stop_reason']})")
    return {"recovery_steps": recovery["steps_done"], "recovery": summary}


def result_row(result: dict[str, Any], label: str = "", key: str = "") -> dict[str, Any]:
    """One flat row of a ``RunResult.to_dict()``: settings, quality, memory and timings."""
    config, memory = result["config"], result["memory"]
    prune, quant = config.get("prune") or {}, config.get("quant") or {}
    row: dict[str, Any] = {
        "setting": label, "model": result["model"]["name"], "kind": result["model"]["kind"],
        "prune_method": prune.get("method", "none"), "prune_pattern": prune.get("pattern", "unstructured"),
        "prune_ratio": prune.get("ratio", 0.0), "quant_method": quant.get("method", "none"),
        "bits": quant.get("bits", 16),
        "group_size": quant.get("group_size") if quant.get("granularity") == "group" else None,
        "symmetric": quant.get("symmetric", True)}
    for name in _COMPRESSED_METRICS:
        if name in result["compressed"]:
            row[name] = result["compressed"][name]
        if name in result["baseline"]:
            row[f"baseline_{name}"] = result["baseline"][name]
    zero_shot = result["compressed"].get("zero_shot")
    if zero_shot:
        row.update(zero_shot_accuracy=zero_shot["accuracy"], zero_shot_ci_low=zero_shot["ci_low"],
                   zero_shot_ci_high=zero_shot["ci_high"])
    calibration = (result.get("protocol") or {}).get("calibration")
    row["calibration"] = calibration_label(calibration) if calibration else None
    row.update(recovery_fields(result.get("recovery")))
    row.update(sparsity=result["sparsity"], dense_bytes=memory["dense_bytes"], stored_bytes=memory["stored_bytes"],
               measured_bytes=memory["measured_bytes"], bits_per_weight=memory["bits_per_weight"],
               x_smaller=memory["ratio"], simulated=memory["simulated"],
               compress_s=result["timings"].get("compress_s"), evaluate_s=result["timings"].get("evaluate_s"),
               key=key)
    return row
