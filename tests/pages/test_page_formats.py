"""The Formats page and the Compress page's format choice, through AppTest on a tiny model."""
from __future__ import annotations

import pytest

from page_support import (app_cache, array, errors, figures, new_app, no_exception, run_setting,  # noqa: F401
                          use_tiny_model)
from ui.formats_view import RESULT

LONG_RUN = 900  # seconds: four runs on two shared cores; never a timing assertion


def open_formats():
    at = new_app()
    at.switch_page("pages/formats.py").run()
    return use_tiny_model(at)


@pytest.mark.slow
def test_formats_compare_on_the_pareto_front_and_side_by_side(app_cache):
    at = open_formats()
    assert no_exception(at)
    at.multiselect(key="formats.choice").set_value(["W4A16 g32 sym", "NF4 b64", "MXFP4 b32", "Q4_K"]).run()
    at.button(key="formats.run").click().run(timeout=LONG_RUN)
    assert no_exception(at) and not errors(at)
    table = at.session_state[RESULT]["table"]
    assert table["setting"].tolist() == ["W4A16 g32 sym", "NF4 b64", "MXFP4 b32", "Q4_K"]
    tradeoff, pair = figures(at)
    front = next(trace for trace in tradeoff["data"] if trace["name"] == "Pareto front")
    assert len(array(front["x"])) >= 1
    plotted = sorted(x for trace in tradeoff["data"] if trace["name"] != "Pareto front" for x in array(trace["x"]))
    assert plotted == sorted(table["bits_per_weight"])  # stored bits per weight, one marker per format
    assert [trace["type"] for trace in pair["data"]] == ["heatmap"] * 3
    assert any("Q5_0" in caption.value for caption in at.caption)  # tiny rows of 64: Q4_K fell back


@pytest.mark.slow
def test_compress_page_offers_formats_with_a_worked_block(app_cache):
    at = use_tiny_model(new_app())
    at.selectbox(key="quant.format").set_value("nvfp4").run()
    at.toggle(key="quant.rotate").set_value(True).run()
    assert no_exception(at) and not errors(at)
    assert any("NVFP4 b16 rot" in expander.label for expander in at.expander)
    run_setting(at)  # live mode runs it; wait for the exact figure
    assert no_exception(at) and not errors(at)
    assert any("A worked block" in markdown.value for markdown in at.markdown)  # the model is loaded now
    worked = at.dataframe[0].value
    assert list(worked.columns) == ["weight", "code", "decoded", "error"] and len(worked) == 16
    assert (worked["error"] - (worked["decoded"] - worked["weight"])).abs().max() < 1e-12
