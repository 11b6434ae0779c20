"""Live mode of the Compress page: runs start when a setting changes, the newest setting wins,
estimates come before the exact figure, and what needs no evaluation is drawn before it."""
from __future__ import annotations

import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from memopt_core.config import EvalConfig, ModelSpec, QuantConfig, RunConfig
from memopt_core.runs.store import ResultStore
from page_support import (LIVE_RUN, RUN_TIMEOUT, app_cache, errors, figures, new_app, no_exception,  # noqa: F401
                          use_tiny_model, wait_for_run)
from ui import loaders
from ui.live_run import LiveRun

SETTING = RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(bits=3),
                    eval=EvalConfig(seq_len=32, max_tokens=256, gen_tokens=0, zero_shot=False))


@pytest.mark.slow
def test_a_changed_setting_runs_without_run_and_goes_to_the_store(app_cache):
    at = use_tiny_model(new_app())
    assert "compress.run" not in [button.key for button in at.button]  # live mode: no Run button
    at.select_slider(key="quant.bits").set_value(3).run()
    run = at.session_state[LIVE_RUN]
    wait_for_run(at)
    state = run.snapshot()
    assert state.stage == "done" and no_exception(at) and not errors(at)
    assert [row["windows"] for row in state.estimates] == [1, 2]  # 128 tokens: 2 windows, in order
    assert not state.estimates[0]["exact"] and state.estimates[-1]["exact"]
    assert state.stamps["compressing"] <= state.stamps["scoring"] <= state.stamps["finishing"] <= state.stamps["done"]
    assert state.result["compressed"]["perplexity"] == state.estimates[-1]["perplexity"]
    stored = ResultStore().rows()
    assert len(stored) == 1 and "W3A16" in stored[0]["setting"]
    assert any(markdown.value.startswith("**Exact: all 2 windows") for markdown in at.markdown)


@pytest.mark.slow
def test_a_newer_setting_cancels_the_one_in_flight(app_cache):
    at = use_tiny_model(new_app())
    at.select_slider(key="eval.max_tokens").set_value(16384)  # many windows: still running when replaced
    at.select_slider(key="eval.seq_len").set_value(32)
    at.select_slider(key="quant.bits").set_value(2).run()
    first = at.session_state[LIVE_RUN]
    at.select_slider(key="eval.max_tokens").set_value(128)
    at.select_slider(key="quant.bits").set_value(8).run()
    second = at.session_state[LIVE_RUN]
    assert second is not first
    wait_for_run(at)
    assert first.snapshot().stage == "cancelled" and first.snapshot().result is None
    assert second.snapshot().stage == "done"
    assert [row["setting"] for row in ResultStore().rows()] == ["W8A16 g128 sym"]  # only finished ones


@pytest.mark.slow
def test_early_stop_labels_an_estimate_and_keeps_it_out_of_the_store(app_cache):
    at = use_tiny_model(new_app())
    at.select_slider(key="eval.max_tokens").set_value(2048)
    at.select_slider(key="eval.seq_len").set_value(32).run()
    at.toggle(key="compress.early").set_value(True).run()
    at.select_slider(key="compress.width").set_value(0.1)
    at.select_slider(key="quant.bits").set_value(8).run()
    run = at.session_state[LIVE_RUN]
    wait_for_run(at)
    compressed = run.snapshot().result["compressed"]
    assert not compressed["exact"] and compressed["label"] == f"estimate from {compressed['tokens']:,} tokens"
    assert compressed["tokens"] < compressed["total_tokens"]
    low, high = compressed["ratio_ci95"]
    assert (high - low) / 2 <= 0.1 * compressed["perplexity_ratio"] * 1.0001
    assert any("Estimate from" in warning.value and "not stored" in warning.value for warning in at.warning)
    assert ResultStore().count() == 0


@pytest.mark.slow
def test_compression_charts_are_drawn_before_any_estimate(app_cache):
    bench = loaders.workbench(SETTING.model)
    partial = next(bench.run_steps(SETTING)).partial  # the copy is built, nothing evaluated yet
    run = LiveRun(SETTING, "key", lambda *request: iter(()), save=None)
    run._update(stage="scoring", partial=partial)

    def page(run):
        from ui.live_view import show_run

        show_run(run, key="live")

    at = AppTest.from_function(page, args=(run,), default_timeout=RUN_TIMEOUT).run()
    assert no_exception(at)
    titles = [figure["layout"]["title"]["text"] for figure in figures(at)]
    assert titles[0].startswith("Sparsity per layer") and len(titles) == 2  # sparsity and bytes per layer
    assert "Stored (GiB)" in [metric.label for metric in at.metric]
    assert any("Scoring windows" in info.value for info in at.info)


def test_worker_failure_is_one_line_on_the_page(app_cache):
    def broken(config, cancel, target_ci):
        raise RuntimeError("disk on fire\nsecond line")

    run = LiveRun(SETTING, "key", broken, save=None).start()
    run.thread.join()

    def page(run):
        from ui.live_view import show_run

        show_run(run, key="live")

    at = AppTest.from_function(page, args=(run,), default_timeout=RUN_TIMEOUT).run()
    assert run.snapshot().stage == "failed"
    assert errors(at) == ["The run failed: unexpected error (RuntimeError: disk on fire); the page is still "
                          "usable: change a setting and try again"]
    assert isinstance(run.thread, threading.Thread) and no_exception(at)


def test_wait_for_change_wakes_on_the_next_update_and_times_out_without_one():
    run = LiveRun(SETTING, "key", lambda *request: iter(()), save=None)
    seen = run.snapshot()
    assert not run.wait_for_change(seen, 0.05)
    timer = threading.Timer(0.1, lambda: run._update(stage="scoring"))
    timer.start()
    assert run.wait_for_change(seen, 5.0) and run.snapshot().stage == "scoring"
    assert run.wait_for_change(seen, 0.0)  # already changed: no wait


def test_a_hold_ends_at_a_change_and_lets_streamlit_interrupt_it_meanwhile():
    from ui.live_view import hold_until_changed

    run = LiveRun(SETTING, "key", lambda *request: iter(()), save=None)
    checks = []
    assert not hold_until_changed(run, run.snapshot(), lambda: checks.append(1), hold_s=0.5, step_s=0.05)
    assert 5 <= len(checks) <= 10  # every step_s while nothing changed

    class Interrupted(Exception):
        pass

    def newer_request():  # what Streamlit's yield point does when a slider moved meanwhile
        raise Interrupted

    with pytest.raises(Interrupted):
        hold_until_changed(run, run.snapshot(), newer_request, hold_s=5.0, step_s=0.05)
    seen = run.snapshot()
    threading.Timer(0.1, lambda: run._update(stage="scoring")).start()
    assert hold_until_changed(run, seen, lambda: None, hold_s=5.0, step_s=0.05)


def test_a_hold_that_ends_waits_for_a_burst_of_updates_to_pause():
    from ui.live_view import SETTLE_MAX_S, SETTLE_S, hold_until_changed, settle

    run = LiveRun(SETTING, "key", lambda *request: iter(()), save=None)
    seen = run.snapshot()
    for delay, stage in ((0.05, "compressing"), (0.05 + SETTLE_S / 2, "scoring")):  # a round's two estimates
        threading.Timer(delay, lambda stage=stage: run._update(stage=stage)).start()
    assert hold_until_changed(run, seen, lambda: None, hold_s=5.0, step_s=0.05)
    assert run.snapshot().stage == "scoring"  # both updates drawn at once
    began = time.monotonic()
    settle(run)  # nothing more comes: one pause, no longer
    assert SETTLE_S <= time.monotonic() - began < SETTLE_MAX_S
    ticker = threading.Thread(target=lambda: [time.sleep(SETTLE_S / 4) or run._update(stage=str(i)) for i in range(40)])
    began = time.monotonic()
    ticker.start()
    settle(run)  # updates that never pause: the wait still ends
    assert SETTLE_MAX_S <= time.monotonic() - began < SETTLE_MAX_S + 2 * SETTLE_S
    ticker.join()
