"""Recovery by distillation on the bundled models. Prints figures and ratios; asserts nothing.

    python bench/bench_recovery.py [--steps 400] [--max-seconds 1200] [--reported-seconds 1200]
                                   [--threads N] [--only NAME ...] [--max-tokens 4096] [--texts NAME ...]
                                   [--skip-lora] [--json-out FILE]

SmolLM2-135M, each setting compressed, then recovered for at most ``--max-seconds`` of training
(validation scoring included; CPU seconds of this process, see CLOCK) or ``--steps`` steps:
magnitude 50% and RTN W3 g64 (targets: >= 80% of the perplexity gap to the original closed on at
least two texts), Wanda 50% and GPTQ W3 g64 (reported). Perplexity on the first ``--max-tokens``
tokens (512-token windows) of the bundled Wikipedia leads and news, which training never reads (it
starts after their first 16,448 tokens), and of gensim's Lee test corpus (``lee.cor``), which
training never reads at all.
Gap closed = (compressed - recovered) / (compressed - original). Order: MiniLM, the two target
settings, the LoRA comparison, then the reported settings (at most ``--reported-seconds`` each);
the JSON (``--json-out``) is rewritten after each part, so an interrupted run keeps what it printed.

Straight-through training vs a LoRA adapter (``peft``, rank 16 on every targeted layer, merged and
re-quantized onto the same grid at the end), on RTN W3 g64, same data and time.

MiniLM-L6 magnitude 50%, at most 120 CPU seconds (a minute on two cores) of training: mean cosine to the original's embeddings of the
200 labelled sentences (target: a third of the gap to 1 closed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lora_baseline import lora_recover  # noqa: E402
from memopt_core.compression.layers import module_storage_bytes  # noqa: E402
from memopt_core.compression.sparsity import layer_sparsity, overall_sparsity  # noqa: E402
from memopt_core.config import EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig  # noqa: E402
from memopt_core.evaluation.progressive import evaluate_causal_lm  # noqa: E402
from memopt_core.texts import load_text, token_windows  # noqa: E402
from memopt_core.recovery.config import RecoveryConfig  # noqa: E402
from memopt_core.recovery.data import training_data  # noqa: E402
from memopt_core.recovery.distill import Distillation  # noqa: E402
from memopt_core.recovery.recover import recover  # noqa: E402
from memopt_core.recovery.trainable import open_for_training_  # noqa: E402
from memopt_core.runs.workbench import Workbench  # noqa: E402
from bench.bench_calibrated import lee_text  # noqa: E402

G64 = dict(granularity="group", group_size=64)
# Training time is counted in CPU seconds of this process: on a machine shared with other work, wall
# time measures the neighbours. Ten minutes on two cores are at most 1,200 CPU seconds; a loaded core
# does less per CPU second than an idle one (memory bandwidth is shared), so the budget is not generous.
CLOCK = time.process_time
SETTINGS = {"magnitude 50%": (PruneConfig("magnitude", 0.5), None),
            "RTN W3 g64": (None, QuantConfig(bits=3, **G64)),
            "wanda 50%": (PruneConfig("wanda", 0.5), None),
            "GPTQ W3 g64": (None, QuantConfig(method="gptq", bits=3, **G64))}
TARGETS = ("magnitude 50%", "RTN W3 g64")  # the targets; the others are reported


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


EVAL_TEXTS = ("wikipedia", "news", "lee")


def eval_windows(tokenizer, max_tokens: int, names: list[str]) -> dict:
    """The first ``max_tokens`` tokens (512-token windows) of each named text."""
    texts = {name: lee_text() if name == "lee" else load_text(name).text for name in names}
    return {name: token_windows(tokenizer, text, 512, max_tokens) for name, text in texts.items()}


def perplexities(model, windows: dict) -> dict:
    return {name: evaluate_causal_lm(model, w, kl_top_k=1)[0].perplexity for name, w in windows.items()}


def gaps_closed(original: dict, before: dict, after: dict) -> dict:
    return {name: (before[name] - after[name]) / (before[name] - original[name]) for name in original}


def show(label: str, values: dict, extra: str = "") -> None:
    print(f"  {label:<26}" + "  ".join(f"{k} {v:9.2f}" for k, v in values.items()) + f"  {extra}", flush=True)


def distil(bench: Workbench, compressed, recovery: RecoveryConfig, freeze_zeros: bool, eval_config: EvalConfig):
    """The recovery path of ``recover()`` on an already compressed copy (changed in place)."""
    data = training_data("causal-lm", bench.loaded.tokenizer, recovery, eval_config, [])
    view = open_for_training_(compressed.model, compressed.target_names, freeze_zeros=freeze_zeros,
                              train_norms=recovery.train_norms, original=bench.loaded.model)
    loop = Distillation(view, bench.loaded.model, bench.loaded.tokenizer, "causal-lm", data, recovery, CLOCK)
    with torch.enable_grad():
        for update in loop.run():
            if update.point is not None:
                print(f"    step {update.point.step:4d}  validation ppl {update.point.validation:9.2f}  "
                      f"{update.seconds:6.0f} CPU s", flush=True)
    loop.finish()
    view.export_()
    return loop.summary(), data


def smollm2(args, recovery: RecoveryConfig, save) -> dict:
    bench = Workbench.load(ModelSpec("smollm2-135m"))
    eval_config = EvalConfig(max_tokens=args.max_tokens, gen_tokens=0, zero_shot=False)
    windows = eval_windows(bench.loaded.tokenizer, args.max_tokens, args.texts)
    original = perplexities(bench.loaded.model, windows)
    print("SmolLM2-135M, perplexity on the first", args.max_tokens, "tokens of each text", flush=True)
    show("original", original)
    results = {"original": original}
    reported = RecoveryConfig(**{**recovery.to_dict(), "max_seconds": args.reported_seconds})
    for name in [n for n in SETTINGS if not args.only or n in args.only]:
        results[name] = one_setting(bench, name, windows, original, recovery if name in TARGETS else reported,
                                    eval_config)
        save(results)
        if name == "RTN W3 g64" and not args.skip_lora:
            results["lora"] = lora_comparison(bench, windows, original, recovery, eval_config, results[name])
            save(results)
    return results


def one_setting(bench: Workbench, name: str, windows: dict, original: dict, recovery: RecoveryConfig,
                eval_config: EvalConfig) -> dict:
    """Compress ``name``, recover it, print and return the figures."""
    prune, quant = SETTINGS[name]
    config = RunConfig(bench.loaded.spec, prune=prune, quant=quant, eval=eval_config)
    compressed, memory = bench.compress(config)
    before = perplexities(compressed.model, windows)
    rows = layer_sparsity(compressed.model, compressed.target_names)
    bytes_before, sparsity_before = module_storage_bytes(compressed.model), overall_sparsity(rows)
    print(f"{name} (load average {load_average()})", flush=True)
    show("compressed", before)
    summary, data = distil(bench, compressed, recovery, prune is not None, eval_config)
    after = perplexities(compressed.model, windows)
    closed = gaps_closed(original, before, after)
    sparsity_after = overall_sparsity(layer_sparsity(compressed.model, compressed.target_names))
    show("recovered", after, f"(best checkpoint: step {summary['best_step']})")
    show("gap closed", {k: 100 * v for k, v in closed.items()}, "%")
    print(f"  {summary['steps_done']} steps, {summary['tokens']:,} tokens, {summary['seconds']:.0f} CPU s "
          f"({summary['train_seconds']:.0f} training, {summary['validation_seconds']:.0f} validation; "
          f"{summary['wall_seconds']:.0f} s wall), "
          f"{summary['stop_reason']}; stored bytes {bytes_before:,} -> {module_storage_bytes(compressed.model):,}; "
          f"sparsity {sparsity_before:.4f} -> {sparsity_after:.4f}; load average {load_average()}", flush=True)
    return {"before": before, "after": after, "gap_closed": closed, "summary": summary,
            "data": data.description, "bytes": [bytes_before, module_storage_bytes(compressed.model)],
            "sparsity": [sparsity_before, sparsity_after], "bits_per_weight": memory.bits_per_weight}


def lora_comparison(bench, windows, original, recovery, eval_config, ste) -> dict:
    config = RunConfig(bench.loaded.spec, quant=QuantConfig(bits=3, **G64), eval=eval_config)
    compressed, _ = bench.compress(config)
    before = perplexities(compressed.model, windows)
    lora = RecoveryConfig(**{**recovery.to_dict(), "lr": recovery.lr * 10})
    print(f"RTN W3 g64 with a LoRA adapter (rank 16, lr {lora.lr:g}), merged and re-quantized onto the same grid "
          f"(load average {load_average()})", flush=True)
    outcome = lora_recover(bench, compressed, lora, eval_config, CLOCK)
    merged = perplexities(compressed.model, windows)
    show("adapter kept (dense)", {"validation": outcome["adapter_perplexity"]}, "(held-out validation windows)")
    show("merged + re-quantized", merged)
    show("gap closed", {k: 100 * v for k, v in gaps_closed(original, before, merged).items()}, "%")
    if ste is not None:
        show("straight-through", ste["after"])
    print(f"  {outcome['summary']['steps_done']} steps, {outcome['summary']['seconds']:.0f} CPU s; codes changed by the "
          f"merge: {outcome['codes_changed']:.2%}", flush=True)
    return {"before": before, "merged": merged, **outcome}


def minilm(max_seconds: float) -> dict:
    bench = Workbench.load(ModelSpec("minilm-l6"))
    config = RunConfig(bench.loaded.spec, prune=PruneConfig("magnitude", 0.5), eval=EvalConfig(zero_shot=False))
    recovery = RecoveryConfig(steps=1000, max_seconds=max_seconds, eval_every=10)
    print(f"MiniLM-L6 magnitude 50%, at most {max_seconds:.0f} CPU s (load average {load_average()})", flush=True)
    run = recover(bench, config, recovery, clock=CLOCK)
    before, after = run.before["cosine_similarity"], run.result.compressed["cosine_similarity"]
    summary = run.recovery
    print(f"  cosine to the original: compressed {before:.4f}, recovered {after:.4f}; gap to 1 closed "
          f"{(after - before) / (1 - before):.1%} in {summary['steps_done']} steps, {summary['tokens']:,} tokens, "
          f"{summary['seconds']:.0f} CPU s ({summary['wall_seconds']:.0f} s wall); same bytes "
          f"{summary['checks']['same_bytes']}", flush=True)
    return {"before": before, "after": after, "summary": {k: v for k, v in summary.items() if k != "curve"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="at most this many steps (the budget ends first)")
    parser.add_argument("--max-seconds", type=float, default=1200.0,
                        help="training budget per setting, CPU seconds of this process (default 1200: two cores "
                             "for 10 minutes)")
    parser.add_argument("--reported-seconds", type=float, default=1200.0,
                        help="the same budget for the reported settings (Wanda, GPTQ)")
    parser.add_argument("--eval-every", type=int, default=20, help="steps between validation scores")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--texts", nargs="+", default=list(EVAL_TEXTS), choices=EVAL_TEXTS,
                        help="evaluated texts (default all three)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--only", nargs="*", default=[], help=f"settings among {list(SETTINGS)}, or 'minilm'")
    parser.add_argument("--minilm-seconds", type=float, default=120.0,
                        help="MiniLM's training budget, CPU seconds (default 120: a minute on two cores)")
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, load average at start {load_average()}; training time "
          "counted in CPU seconds of this process", flush=True)
    recovery = RecoveryConfig(steps=args.steps, max_seconds=args.max_seconds, eval_every=args.eval_every)
    print(f"recovery: {recovery.to_dict()}", flush=True)
    start = time.perf_counter()
    results = {}

    def save(part: dict | None = None, name: str = "smollm2") -> None:
        if part is not None:
            results[name] = part
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))

    if not args.only or "minilm" in args.only:
        save(minilm(args.minilm_seconds), "minilm")
    if not args.only or any(name in SETTINGS for name in args.only):
        save(smollm2(args, recovery, save))
    print(f"total {time.perf_counter() - start:.0f} s, load average at the end {load_average()}", flush=True)


if __name__ == "__main__":
    main()
