"""The Recovery page through AppTest: a recovery runs in a worker thread with a live curve, its
result shows before / after with the same bytes, the store answers it again, and Trade-offs and
Runs show it beside the unrecovered point."""
from __future__ import annotations

import pytest

from page_support import app_cache, errors, figures, new_app, no_exception, titles, use_tiny_model  # noqa: F401
from ui.recovery_view import JOB, SHOWN
from ui.sweep_view import SWEEP


def _recovery_page(at):
    at = use_tiny_model(at.switch_page("pages/recovery.py").run())
    at.selectbox(key="prune.method").set_value("magnitude").run()
    at.slider(key="prune.ratio").set_value(0.5)
    at.select_slider(key="quant.bits").set_value(16)
    at.select_slider(key="recovery.steps").set_value(10)
    at.select_slider(key="recovery.tokens").set_value(256)
    at.select_slider(key="recovery.every").set_value(5)
    return at.run()


@pytest.mark.slow
def test_recover_live_then_from_the_store_and_beside_the_sweep(app_cache):
    at = _recovery_page(new_app())
    assert no_exception(at) and not errors(at)
    at.button(key="recovery.run").click().run()
    assert no_exception(at) and not errors(at)
    job = at.session_state[JOB]
    assert job.wait(timeout=600), "the recovery did not finish"
    at.run()
    assert no_exception(at) and not errors(at)
    state = job.snapshot()
    assert state["result"] is not None and [p["step"] for p in state["points"]] == [0, 5, 10]
    labels = [metric.label for metric in at.metric]
    assert labels[:4] == ["Perplexity, original", "Perplexity, compressed", "Perplexity, recovered",
                          "Gap to the original closed"]
    assert "Recovery: quality on held-out data while training" in titles(at)
    assert any("the same bytes" in message.value for message in at.success)

    at.button(key="recovery.run").click().run()  # the same setting again: answered from the store
    assert no_exception(at) and JOB not in at.session_state and at.session_state[SHOWN]["from_store"]

    at.switch_page("pages/tradeoffs.py").run()
    at.multiselect(key="sweep.ratios").set_value([0.5])
    at.multiselect(key="sweep.bits").set_value([16]).run()
    at.button(key="tradeoffs.run").click().run()
    assert no_exception(at) and not errors(at)
    assert len(at.session_state[SWEEP]["table"]) == 1
    lines = {trace["name"] for trace in figures(at)[0]["data"]}
    assert {"magnitude 50%", "magnitude 50% + recovery 10 steps"} <= lines

    at.switch_page("pages/runs.py").run()
    assert no_exception(at) and not errors(at)
    settings = set(at.dataframe[0].value["setting"])
    assert {"magnitude 50%", "magnitude 50% + recovery 10 steps"} <= settings


def test_nothing_to_recover_is_a_one_line_error(app_cache):
    at = _recovery_page(new_app())
    at.selectbox(key="prune.method").set_value("none").run()
    at.button(key="recovery.run").click().run()
    assert no_exception(at)
    assert any("nothing to recover" in error for error in errors(at))
    assert JOB not in at.session_state
