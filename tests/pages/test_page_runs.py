"""The Runs page through AppTest: the results store, sweep overlays, downloads."""
from __future__ import annotations

import json

import pytest
from test_page_layers import store_a_sweep

from page_support import app_cache, array, errors, figures, new_app, no_exception  # noqa: F401


def open_runs():
    return new_app().switch_page("pages/runs.py").run()


def test_empty_store_says_so(app_cache):
    at = open_runs()
    assert no_exception(at)
    assert any("results store is empty" in info.value for info in at.info)
    assert any("None yet" in caption.value for caption in at.caption)  # no saved models either


@pytest.mark.slow
def test_stored_sweeps_are_listed_filtered_overlaid_and_downloadable(app_cache):
    store_a_sweep("first")
    store_a_sweep("first")  # the same settings again: answered from the store, not duplicated
    at = open_runs()
    assert no_exception(at) and not errors(at)
    assert at.selectbox(key="runs.model").value == "tiny-bert"
    assert at.multiselect(key="runs.sweeps").options == ["first"]
    assert len(at.dataframe[0].value) == 4
    tradeoff = figures(at)[0]
    names = [trace["name"] for trace in tradeoff["data"]]
    assert names == ["first", "Pareto front"] and len(array(tradeoff["data"][0]["x"])) == 4
    downloads = {button.label for button in at.get("download_button")}
    assert downloads == {"Download CSV", "Download JSON (full results)"}


@pytest.mark.slow
def test_single_runs_and_sweeps_can_be_told_apart(app_cache):
    store_a_sweep("first")
    at = new_app()
    at.selectbox(key="model.choice").set_value("tiny-bert")
    at.select_slider(key="quant.bits").set_value(8).run()
    at.button(key="compress.run").click().run()
    at.switch_page("pages/runs.py").run()
    assert at.multiselect(key="runs.sweeps").options == ["(single runs)", "first"]
    at.multiselect(key="runs.sweeps").set_value(["(single runs)"]).run()
    assert no_exception(at) and len(at.dataframe[0].value) == 1
    assert [trace["name"] for trace in figures(at)[0]["data"]] == ["(single runs)", "Pareto front"]


@pytest.mark.slow
def test_json_download_holds_full_results(app_cache):
    from memopt_core.runs.store import ResultStore
    from ui.runs_view import store_table

    store_a_sweep("first")
    rows = ResultStore().rows()
    table = store_table(rows)
    assert {"created", "sweep", "evaluation", "stored_mib", "cosine_similarity"} <= set(table.columns)
    assert set(table["evaluation"]) == {"labelled sentences"}
    assert json.loads(json.dumps([r["result"] for r in rows], default=str))[0]["layers"]
