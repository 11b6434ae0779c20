"""The Sensitivity page through AppTest: a ranking chart, then a mixed-precision plan applied and measured."""
from __future__ import annotations

import pytest

from page_support import app_cache, errors, figures, new_app, no_exception, use_tiny_model  # noqa: F401


def _small(at):
    at = use_tiny_model(at.switch_page("pages/sensitivity.py").run(), "tiny-llama")
    at.select_slider(key="sens.tokens").set_value(256)
    return at.run()


@pytest.mark.slow
def test_ranking_then_plan(app_cache):
    at = _small(new_app())
    assert no_exception(at) and not errors(at) and not figures(at)
    at.button(key="sens.measure").click().run()
    assert no_exception(at) and not errors(at)
    (ranking,) = figures(at)
    units = [unit for trace in ranking["data"] for unit in trace["y"]]
    assert units and all(unit.startswith("model.layers.") for unit in units) and len(units) == 2  # 2 blocks
    assert "KL" in ranking["layout"]["xaxis"]["title"]["text"]
    assert len(at.dataframe[0].value) == 2

    at.slider(key="sens.budget").set_value(3.5).run()
    at.button(key="sens.plan_run").click().run()
    assert no_exception(at) and not errors(at)
    plan = figures(at)[1]
    chosen = {unit: bits for trace in plan["data"] for unit, bits in zip(trace["x"], trace["y"])}
    assert set(chosen) == set(units) and set(chosen.values()) <= {2, 3, 4, 8}
    assert "budget 3.500" in plan["layout"]["title"]["text"]
    labels = [metric.label for metric in at.metric]
    assert labels == ["plan: perplexity", "uniform 4-bit: perplexity", "original"]
    assert at.get("download_button")

    at.switch_page("pages/compress.py").run()
    at.switch_page("pages/sensitivity.py").run()  # both results survive a page switch
    assert no_exception(at) and len(figures(at)) == 2


def test_a_bad_model_id_is_a_one_line_error(app_cache):
    at = new_app().switch_page("pages/sensitivity.py").run()
    at.selectbox(key="model.choice").set_value("other").run()
    at.text_input(key="model.custom").input("not a model/at all!").run()
    assert no_exception(at) and any("model" in error for error in errors(at))
    assert at.button(key="sens.measure").disabled
