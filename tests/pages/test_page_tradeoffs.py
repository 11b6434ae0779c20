"""The Trade-offs page through AppTest: a small grid on a tiny model."""
from __future__ import annotations

import pytest

from page_support import app_cache, array, errors, figures, new_app, no_exception, use_tiny_model  # noqa: F401
from ui.sweep_view import SWEEP


def open_tradeoffs(model: str):
    at = new_app()
    at.switch_page("pages/tradeoffs.py").run()
    return use_tiny_model(at, model)


def test_grid_widgets_count_the_settings(app_cache):
    at = open_tradeoffs("tiny-llama")
    assert no_exception(at)
    assert at.multiselect(key="sweep.methods").value == ["magnitude"]
    assert at.multiselect(key="sweep.bits").value == [16, 8, 4]
    assert any("6 settings" in caption.value for caption in at.caption)  # 2 ratios x (16, 8, 4)
    at.multiselect(key="sweep.groups").set_value([32, 128]).run()
    assert any("10 settings" in caption.value for caption in at.caption)  # 16-bit ignores group sizes
    at.multiselect(key="sweep.bits").set_value([]).run()
    assert no_exception(at) and any("bits is empty" in message for message in errors(at))
    assert at.button(key="tradeoffs.run").disabled


@pytest.mark.slow
def test_gptq_is_a_grid_axis_shown_beside_rtn(app_cache):
    at = open_tradeoffs("tiny-llama")
    at.multiselect(key="sweep.bits").set_value([4]).run()
    at.multiselect(key="sweep.quantizers").set_value(["rtn", "gptq"]).run()
    assert any("4 settings" in caption.value for caption in at.caption)  # 2 ratios x (RTN, GPTQ) 4-bit
    at.button(key="tradeoffs.run").click().run()
    assert no_exception(at) and not errors(at)
    table = at.session_state[SWEEP]["table"]
    assert sorted(table["quant_method"]) == ["gptq", "gptq", "rtn", "rtn"]
    assert table.loc[table["quant_method"] == "gptq", "calibration"].str.startswith("both 64x512").all()
    lines = {trace["name"] for trace in figures(at)[0]["data"]}
    assert {"not pruned", "not pruned · GPTQ", "magnitude 50%", "magnitude 50% · GPTQ"} <= lines


@pytest.mark.slow
def test_sweep_shows_progress_table_curves_and_csv(app_cache):
    at = open_tradeoffs("tiny-llama")
    at.multiselect(key="sweep.bits").set_value([16, 4]).run()
    at.button(key="tradeoffs.run").click().run()
    assert no_exception(at) and not errors(at)
    assert at.get("progress")  # the bar that showed the current setting stays, at 100%
    table = at.session_state[SWEEP]["table"]
    assert len(table) == 4 and table["perplexity"].notna().all()
    tradeoff, bits, heatmap = figures(at)
    front = next(trace for trace in tradeoff["data"] if trace["name"] == "Pareto front")
    assert len(array(front["x"])) == int(table["pareto"].sum()) >= 1
    assert "perplexity: %{customdata" in tradeoff["data"][0]["hovertemplate"]
    assert bits["layout"]["xaxis"]["title"]["text"] == "bits"
    assert heatmap["data"][0]["type"] == "heatmap"
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 4
    assert [button.label for button in at.get("download_button")] == ["Download CSV"]
    assert "4 computed here and 0 from the results store" in at.success[0].value


@pytest.mark.slow
def test_rerunning_a_sweep_answers_from_the_store(app_cache):
    at = open_tradeoffs("tiny-bert")
    at.multiselect(key="sweep.bits").set_value([16, 8]).run()
    at.button(key="tradeoffs.run").click().run()
    assert no_exception(at)
    again = open_tradeoffs("tiny-bert")  # a new session with the same grid
    again.multiselect(key="sweep.bits").set_value([16, 8]).run()
    again.button(key="tradeoffs.run").click().run()
    assert no_exception(again)
    assert "0 computed here and 4 from the results store" in again.success[0].value
    metric = figures(again)[0]["layout"]["yaxis"]["title"]["text"]
    assert metric.startswith("cosine similarity")  # encoders are ranked by similarity


@pytest.mark.slow
def test_a_sweep_sent_to_a_ray_cluster_shows_the_same_progress_and_results(app_cache):
    from memopt_core.config import ClusterConfig
    from memopt_core.runs.ray_executor import connect

    connect(ClusterConfig(), num_cpus=2)  # what an empty address starts: this machine only
    import ray  # after connect(): Ray reads its loopback-only setting when first imported

    try:
        at = open_tradeoffs("tiny-llama")
        at.multiselect(key="sweep.bits").set_value([16, 4]).run()
        at.radio(key="sweep.executor").set_value("ray").run()
        assert at.text_input(key="sweep.ray_address").value == ""
        at.number_input(key="sweep.ray_workers").set_value(2).run()
        at.button(key="tradeoffs.run").click().run()
        assert no_exception(at) and not errors(at)
        assert at.get("progress")
        table = at.session_state[SWEEP]["table"]
        assert len(table) == 4 and table["perplexity"].notna().all()
        assert "4 computed on 2 Ray workers and 0 from the results store" in at.success[0].value
        local = open_tradeoffs("tiny-llama")  # the same grid here answers from what the workers stored
        local.multiselect(key="sweep.bits").set_value([16, 4]).run()
        local.button(key="tradeoffs.run").click().run()
        assert "0 computed here and 4 from the results store" in local.success[0].value
    finally:
        ray.shutdown()
