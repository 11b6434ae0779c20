"""Answers at the speed of a slider, on the bundled SmolLM2: ratios measured in one run.

    python bench/bench_live.py [--max-tokens 4096] [--parts live,cold,zero-shot,dtype,coverage,workers,browser] [--coverage /tmp/memopt-interval-figures.pt]

Targets (issue 9), all warm (model loaded, the original's reference stored) unless said:
- first estimate <= 2x (compression + one window's dense forward);
- exact figure <= 1.15x (compression + evaluation of all windows);
- a new process with the reference stored spends 0 s on the original's baseline;
- zero-shot sentiment (200 sentences) <= 0.25x the previous implementation's time, same accuracies;
- bf16 / fp32 evaluation time and the perplexity difference; which layers use the fused int8 kernel;
- the coverage table of the early intervals (from ``bench_intervals.py --save``);
- windows scored two side by side (one torch thread each) against one forward at a time on both
  threads: exact-figure time quiet and beside a process busy a fifth of the time, as a browser is;
- in a real browser (Playwright + Chromium against ``streamlit run``): seconds from a slider
  release to the first estimate and to the exact figure on the page, against the engine's own
  timings of the same run and against the same setting run quietly in this process right after.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from memopt_core.compression.kernels import DEQUANTIZE, FUSED_INT8  # noqa: E402
from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig  # noqa: E402
from memopt_core.evaluation.causal_lm import (SENTIMENT_LABELS, SENTIMENT_PROMPT, _pad_id, _pad_right,  # noqa: E402
                                             sentiment_accuracy, zero_shot_scores)
from memopt_core.evaluation import side_by_side  # noqa: E402
from memopt_core.evaluation.lm_records import Estimate  # noqa: E402
from memopt_core.evaluation.progressive import evaluate_causal_lm  # noqa: E402
from memopt_core.runs.engine_serve import freeze_what_is_loaded  # noqa: E402
from memopt_core.runs.store import ResultStore  # noqa: E402
from memopt_core.runs.workbench import Workbench  # noqa: E402
from bench_intervals import print_coverage  # noqa: E402
from screenshots import browser_tab, dashboard, live_off, pick, set_slider, settle, throwaway_cache  # noqa: E402

SETTINGS = (QuantConfig(bits=4, granularity="group", group_size=64), QuantConfig(bits=3, granularity="group",
                                                                                 group_size=128),
            QuantConfig(bits=8))
PARTS = ("live", "cold", "zero-shot", "dtype", "coverage", "workers", "browser")


def seconds(fn) -> tuple[object, float]:
    began = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - began


def dense_window_seconds(bench: Workbench, windows: torch.Tensor) -> float:
    """Median of 3 forwards of the original on one window (after a warm-up)."""
    with torch.inference_mode():
        bench.loaded.model(input_ids=windows[:1], use_cache=False)
        times = [seconds(lambda: bench.loaded.model(input_ids=windows[:1], use_cache=False))[1] for _ in range(3)]
    return statistics.median(times)


def estimate_seconds(bench: Workbench, config: RunConfig) -> tuple[float, float]:
    """``config`` run in this process: seconds to the first estimate and to the exact figure."""
    began, first, exact = time.perf_counter(), None, None
    for step in bench.run_steps(config):
        if isinstance(step, Estimate):
            first = first or time.perf_counter() - began
            exact = time.perf_counter() - began if step.exact else exact
    return first, exact


def live_ratios(bench: Workbench, evaluation: EvalConfig, settings: tuple[QuantConfig, ...]) -> None:
    original = bench.original(evaluation)
    original.metrics()  # warm: the reference is scored (or loaded) and stored
    windows = original.data.windows
    dense = dense_window_seconds(bench, windows)
    print(f"one window's dense forward: {dense:.2f} s ({windows.shape[0]} windows of {windows.shape[1]})")
    for quant in settings:
        config = RunConfig(bench.loaded.spec, quant=quant, eval=evaluation)
        (compressed, _), compress_s = seconds(lambda: bench.compress(config))
        _, evaluate_s = seconds(lambda: evaluate_causal_lm(compressed.model, windows, original.lm.covering(
            windows[:, 1:].numel()), evaluation.kl_top_k))
        first, exact = estimate_seconds(bench, config)
        print(f"{config.label:24} compression {compress_s:.2f} s, evaluation {evaluate_s:.2f} s | first estimate "
              f"{first:.2f} s = {first / (compress_s + dense):.2f}x (compression + one window; target <= 2x) | "
              f"exact {exact:.2f} s = {exact / (compress_s + evaluate_s):.3f}x (compression + all windows; "
              "target <= 1.15x)")


def cold_start(evaluation: EvalConfig) -> None:
    """A new process loads SmolLM2 and runs one setting; the reference is already stored."""
    code = ("import json; from memopt_core.config import *; from memopt_core.runs.workbench import run; "
            f"r = run(RunConfig(ModelSpec('smollm2-135m'), quant=QuantConfig(bits=5), eval=EvalConfig(**{evaluation.__dict__!r}))); "
            "print(json.dumps(r.timings))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    timings = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"cold start, new process with the reference stored: baseline {timings['baseline_s']:.2f} s (target 0), "
          f"load {timings['load_s']:.1f} s, first estimate {timings['first_estimate_s']:.1f} s, "
          f"total {timings['total_s']:.1f} s")


def previous_zero_shot(model, tokenizer, sentences, batch_size: int = 16) -> torch.Tensor:
    """The implementation this issue replaced: one sequence per (sentence, label), logits at every position."""
    prompts = [tokenizer(SENTIMENT_PROMPT.format(text=text))["input_ids"] for text, _ in sentences]
    labels = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in SENTIMENT_LABELS]
    jobs = sorted([(i, j, p + c, len(p)) for i, p in enumerate(prompts) for j, c in enumerate(labels)],
                  key=lambda job: len(job[2]))
    scores = torch.empty(len(prompts), len(labels), dtype=torch.float64)
    with torch.inference_mode():
        for first in range(0, len(jobs), batch_size):
            chunk = jobs[first:first + batch_size]
            ids, mask = _pad_right([job[2] for job in chunk], _pad_id(tokenizer))
            log_probs = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float().log_softmax(-1)
            token_lp = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
            position = torch.arange(1, ids.shape[1])[None, :]
            scored = (position >= torch.tensor([job[3] for job in chunk])[:, None]) & (position < mask.sum(1, keepdim=True))
            for (i, j, _, _), value in zip(chunk, torch.where(scored, token_lp.double(), 0.0).sum(1).tolist()):
                scores[i, j] = value
    return scores


def zero_shot(bench: Workbench, evaluation: EvalConfig) -> None:
    config = RunConfig(bench.loaded.spec, quant=QuantConfig(bits=4, granularity="group", group_size=64),
                       eval=EvalConfig(**{**evaluation.__dict__, "zero_shot": True}))
    original = bench.original(config.eval)
    original.zero_shot()  # stored once, as a run stores it
    sentences, tokenizer = original.data.sentences, bench.loaded.tokenizer
    copy = bench.compress(config)[0].model
    old = {name: seconds(lambda m=m: previous_zero_shot(m, tokenizer, sentences))
           for name, m in (("original", bench.loaded.model), ("copy", copy))}
    new_copy, new_s = seconds(lambda: zero_shot_scores(copy, tokenizer, sentences))
    _, new_original_s = seconds(lambda: zero_shot_scores(bench.loaded.model, tokenizer, sentences))
    same = [sentiment_accuracy(old[name][0], sentences).accuracy for name in ("original", "copy")]
    print(f"zero-shot, 200 sentences: previous {old['original'][1] + old['copy'][1]:.1f} s (original + copy) -> "
          f"now {new_s:.1f} s (copy; the original's scores are stored) = "
          f"{new_s / (old['original'][1] + old['copy'][1]):.3f}x (target <= 0.25x); per model "
          f"{new_original_s / old['original'][1]:.3f}x; accuracies previous {same} now "
          f"{[original.zero_shot()['accuracy'], sentiment_accuracy(new_copy, sentences).accuracy]}")


def compute_dtypes(bench: Workbench, windows: torch.Tensor) -> None:
    """fp32 against bf16 compute on two windows, dense and a W8 per-channel copy (fused int8 candidate)."""
    copy = bench.compress(RunConfig(bench.loaded.spec, quant=QuantConfig(bits=8)))[0]
    for name, model in (("dense", bench.loaded.model), ("W8A16 per-channel", copy.model)):
        (fp32, _), fp32_s = seconds(lambda: evaluate_causal_lm(model, windows[:2]))
        (bf16, _), bf16_s = seconds(lambda: evaluate_causal_lm(model, windows[:2], compute="bfloat16"))
        print(f"bf16 / fp32 evaluation time, {name}, 2 windows: {bf16_s / fp32_s:.2f}x ({bf16_s:.1f} s / "
              f"{fp32_s:.1f} s); perplexity {bf16.perplexity:.4f} vs {fp32.perplexity:.4f} "
              f"({bf16.perplexity / fp32.perplexity - 1:+.3%})")
    kernels = [getattr(copy.model.get_submodule(n), "kernel", None) for n in copy.target_names]
    print(f"fused int8 kernel after the bf16 run: {kernels.count(FUSED_INT8)} of {len(kernels)} layers "
          f"({kernels.count(DEQUANTIZE)} dequantize + matmul); torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def busy(stop, share: float, period_s: float = 0.1) -> None:
    """Spin ``share`` of every ``period_s`` until ``stop`` is set: a stand-in for a browser redrawing."""
    while not stop.is_set():
        end = time.perf_counter() + share * period_s
        while time.perf_counter() < end:
            pass
        time.sleep((1 - share) * period_s)


@contextmanager
def load_beside(share: float):
    """Another process busy ``share`` of the time while the block runs (none for 0)."""
    stop = multiprocessing.Event()
    other = multiprocessing.Process(target=busy, args=(stop, share)) if share else None
    if other:
        other.start()
    try:
        yield
    finally:
        stop.set()
        if other:
            other.join()


@contextmanager
def forwards_at_once(workers: int):
    """Score at most ``workers`` batches side by side within the block (the engine's cap is
    ``side_by_side.MAX_WORKERS``)."""
    saved, side_by_side.MAX_WORKERS = side_by_side.MAX_WORKERS, workers
    try:
        yield
    finally:
        side_by_side.MAX_WORKERS = saved


def workers_beside_load(bench: Workbench, evaluation: EvalConfig, share: float = 0.2, repeats: int = 2) -> None:
    """Exact-figure seconds of one warm setting, one forward at a time (2 threads) against two side by
    side (1 thread each), quiet and beside a process busy ``share`` of the time; interleaved, so
    the machine's drift over minutes falls on both alike."""
    config = RunConfig(bench.loaded.spec, quant=QuantConfig(bits=6, granularity="group", group_size=128),
                       eval=evaluation)
    estimate_seconds(bench, config)  # warm: the reference and first-use costs
    times: dict[tuple[float, int], list[float]] = {}
    for _ in range(repeats):
        for load in (0.0, share):
            for workers in (1, 2):
                with load_beside(load), forwards_at_once(workers):
                    times.setdefault((load, workers), []).append(estimate_seconds(bench, config)[1])
    mean = {key: statistics.mean(values) for key, values in times.items()}
    print(f"windows side by side, {config.label}, exact figure (mean of {repeats}): quiet one at a time "
          f"{mean[0.0, 1]:.1f} s, two side by side {mean[0.0, 2]:.1f} s = {mean[0.0, 2] / mean[0.0, 1]:.2f}x; "
          f"beside a process busy {share:.0%} of the time: {mean[share, 1]:.1f} s and {mean[share, 2]:.1f} s = "
          f"{mean[share, 2] / mean[share, 1]:.2f}x; slowdown from the load: one at a time "
          f"{mean[share, 1] / mean[0.0, 1] - 1:+.0%}, side by side {mean[share, 2] / mean[0.0, 2] - 1:+.0%}",
          flush=True)


# The page times itself: after a key is released, a MutationObserver notes when "Estimate from"
# and then "Exact: all" first show in an element that is not stale (textContent: innerText would lay
# the page out). The bench reads those two stamps twice a second; polling the page's texts ten times
# a second cost Chromium and the browser driver about 1 CPU s per 20 s wait, which no person causes.
RECORDER = """() => {
  const seen = window.__memopt_wait = {first: null, exact: null};
  let released = null;
  const shown = () => [...document.querySelectorAll(
      '[data-testid="stElementContainer"]:not([data-stale="true"]) [data-testid="stMarkdownContainer"]')]
    .map(e => e.textContent);
  document.addEventListener("keyup", () => { released = performance.now(); seen.first = seen.exact = null; }, true);
  new MutationObserver(() => {
    if (released === null || seen.exact !== null) return;
    const texts = shown(), since = (performance.now() - released) / 1000;
    if (seen.first === null && texts.some(t => t.startsWith("Estimate from"))) seen.first = since;
    if (seen.first !== null && texts.some(t => t.startsWith("Exact: all"))) seen.exact = since;
  }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                             attributeFilter: ["data-stale"]});
}"""


# Who uses the CPU while a person waits: the 2 cores are shared by all of these.
CPU_GROUPS = (("engine", "memopt_core.runs.engine_serve"), ("server", "streamlit"), ("Chromium", "chrom"),
              ("this bench and its browser driver", "playwright"))


def cpu_seconds_by_group() -> dict[str, float]:
    """CPU seconds (user + system) used so far by the live processes of each group in CPU_GROUPS,
    this process counted with the bench, everything else as 'other'."""
    import psutil

    used = dict.fromkeys([name for name, _ in CPU_GROUPS] + ["other"], 0.0)
    for process in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        text = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
        group = next((name for name, marker in CPU_GROUPS if marker in text), "other")
        if process.info["pid"] == os.getpid():
            group = CPU_GROUPS[-1][0]
        used[group] += times.user + times.system
    return used


def cpu_split(before: dict[str, float], after: dict[str, float], wall: float) -> str:
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in spent.items())
    return f"CPU seconds during the wait: {parts} (of {wall * (os.cpu_count() or 1):.0f} the cores had)"


def wait_after_release(tab, key: str) -> tuple[float, float]:
    """Release the focused slider one step (``key``) -> seconds to the first estimate and to the
    exact figure, as the page timed them (``RECORDER``, installed once)."""
    tab.keyboard.press(key)  # the value is sent to the server when the key is released
    while True:
        time.sleep(0.5)
        seen = tab.evaluate("window.__memopt_wait")
        if seen["exact"] is not None:
            return seen["first"], seen["exact"]


def stored_rows(cache: Path, count: int, timeout_s: float = 180.0) -> None:
    """Wait until the dashboard's results store under ``cache`` holds ``count`` results."""
    deadline = time.perf_counter() + timeout_s
    while ResultStore(cache / "results.db").count() < count and time.perf_counter() < deadline:
        time.sleep(0.5)


# The controls a person moves, one key each (a setting is sent when the key is released), all
# settings never run before: 4 -> 5 -> 6 -> 8 bits, the grid to asymmetric, then 8 -> 6 -> 5 bits.
BIT_WIDTH = ("slider", {"name": "Bit width"})
MOVES = ((BIT_WIDTH, "ArrowRight", "cold: model load and the original's scoring included"),
         (BIT_WIDTH, "ArrowRight", "warm"), (BIT_WIDTH, "ArrowRight", "warm"),
         (("radio", {"name": "symmetric", "exact": True}), "ArrowDown", "warm"),
         (BIT_WIDTH, "ArrowLeft", "warm"), (BIT_WIDTH, "ArrowLeft", "warm"))


def browser_seconds(max_tokens: int, bench: Workbench, quiet_runs: int = 2) -> None:
    """Seconds a person waits in Chromium from releasing a control (``MOVES``) to the first
    estimate and to the exact figure: the first release loads SmolLM2 and scores the original (an
    empty store), the rest are warm (settings never run before). After each wait, the same setting
    runs ``quiet_runs`` times in this process with the dashboard idle: this machine's speed drifts
    by 10-20% over minutes, so the quiet figure is taken right beside the page's. Prints the CPU
    seconds each process group used during each wait and the engine's own timings."""
    source = Path(os.environ.get("MEMOPT_CACHE") or Path.home() / ".cache" / "memopt")
    cache = throwaway_cache(source)
    env = {**os.environ, "MEMOPT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with dashboard(env) as url, browser_tab(url) as tab:
        live_off(tab)  # choose model and tokens without starting runs, then turn live on
        pick(tab, "Model", "SmolLM2")
        set_slider(tab, "Max tokens", str(max_tokens))
        tab.get_by_text("Live", exact=True).click()
        settle(tab)
        tab.evaluate(RECORDER)
        ratios = []
        for count, (control, key, move) in enumerate(MOVES, 1):
            role, name = control
            tab.get_by_role(role, **name).focus()
            cpu_before = cpu_seconds_by_group()
            first, exact = wait_after_release(tab, key)
            cpu = cpu_split(cpu_before, cpu_seconds_by_group(), exact)
            stored_rows(cache, count)  # its generation done and the result stored, as a person reads the figure
            row = ResultStore(cache / "results.db").rows()[0]  # newest first
            timings = row["result"]["timings"]
            engine_s = timings["compress_s"] + timings["evaluate_s"]
            print(f"browser, release -> first estimate {first:.1f} s, -> exact figure {exact:.1f} s ({move}; "
                  f"{row['setting']}; engine in a {os.environ.get('MEMOPT_ENGINE') or 'process'})\n  {cpu}\n"
                  f"  the engine's own timings in the same run: compression + all windows {engine_s:.1f} s, first "
                  f"estimate at {timings['first_estimate_s']:.1f} s; page / engine: exact {exact / engine_s:.2f}x "
                  f"(target <= 1.15x warm), first estimate {first / timings['first_estimate_s']:.2f}x", flush=True)
            time.sleep(2)  # the page's last redraw done
            quiet = [estimate_seconds(bench, RunConfig.from_dict(row["result"]["config"])) for _ in range(quiet_runs)]
            quiet_first, quiet_exact = (statistics.mean(times) for times in zip(*quiet))
            print(f"  the same setting quiet in this process right after (mean of {quiet_runs}): first estimate "
                  f"{quiet_first:.1f} s, exact {quiet_exact:.1f} s; page / quiet engine: first estimate "
                  f"{first / quiet_first:.2f}x (target <= 2x of compression + one window), exact "
                  f"{exact / quiet_exact:.2f}x (target <= 1.15x warm)", flush=True)
            if count > 1:
                ratios.append((first / quiet_first, exact / quiet_exact))
        firsts, exacts = zip(*ratios)
        print(f"browser, warm moves ({len(ratios)}), page / quiet engine: exact mean {statistics.mean(exacts):.2f}x "
              f"(range {min(exacts):.2f}-{max(exacts):.2f}; target <= 1.15x), first estimate mean "
              f"{statistics.mean(firsts):.2f}x (range {min(firsts):.2f}-{max(firsts):.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--settings", type=int, default=len(SETTINGS), help="how many of the live settings")
    parser.add_argument("--coverage", type=Path, default=Path("/tmp/memopt-interval-figures.pt"))
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; torch threads "
          f"{torch.get_num_threads()}")
    evaluation = EvalConfig(max_tokens=args.max_tokens, gen_tokens=0, zero_shot=False)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {', '.join(PARTS)}")
    if parts & {"live", "zero-shot", "dtype", "workers", "browser"}:
        bench, load_s = seconds(lambda: Workbench.load(ModelSpec("smollm2-135m")))
        freeze_what_is_loaded()  # as the dashboard's engine process does: its quiet twin here
        print(f"SmolLM2 loaded in {load_s:.1f} s")
    if "live" in parts:
        live_ratios(bench, evaluation, SETTINGS[:args.settings])
    if "cold" in parts:
        cold_start(evaluation)
    if "zero-shot" in parts:
        zero_shot(bench, evaluation)
    if "dtype" in parts:
        compute_dtypes(bench, bench.original(evaluation).data.windows)
    if "coverage" in parts and args.coverage.is_file():
        print_coverage(torch.load(args.coverage))
    elif "coverage" in parts:
        print(f"coverage: run bench/bench_intervals.py first (it saves {args.coverage})")
    if "workers" in parts:
        workers_beside_load(bench, evaluation)
    if "browser" in parts:
        bench.original(evaluation).metrics()  # this process's reference, before the dashboard starts
        browser_seconds(args.max_tokens, bench)


if __name__ == "__main__":
    main()
