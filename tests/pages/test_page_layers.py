"""The Layers page through AppTest: per-layer heatmaps of one stored or just-run setting."""
from __future__ import annotations

import numpy as np
import pytest

from memopt_core.config import EvalConfig, ModelSpec
from memopt_core.runs.store import ResultStore
from memopt_core.runs.sweep import SweepGrid, run_sweep
from memopt_core.runs.workbench import Workbench
from page_support import (app_cache, array, errors, figures, new_app, no_exception, run_setting,  # noqa: F401
                          use_tiny_model)


def store_a_sweep(name: str = "demo") -> None:
    spec = ModelSpec("tiny-bert")
    run_sweep(spec, SweepGrid(prune_ratios=(0.0, 0.5), bits=(16, 4)), EvalConfig(max_tokens=128, seq_len=64),
              store=ResultStore(), sweep_name=name, load=Workbench.load)


def test_empty_store_points_to_the_compress_page(app_cache):
    at = new_app().switch_page("pages/layers.py").run()
    assert no_exception(at)
    assert any("No results yet" in info.value for info in at.info)
    assert not at.get("plotly_chart")


@pytest.mark.slow
def test_stored_run_shows_block_by_module_heatmaps(app_cache):
    store_a_sweep()
    at = new_app().switch_page("pages/layers.py").run()
    assert no_exception(at) and not errors(at)
    assert len(at.selectbox(key="layers.choice").options) == 4
    sparsity, sqnr, bits = figures(at)
    for figure in (sparsity, sqnr, bits):
        heatmap = figure["data"][0]
        assert heatmap["type"] == "heatmap" and heatmap["x"] == ["block 0", "block 1"]
        assert len(heatmap["y"]) == 6  # query, key, value, attention output, intermediate, output
    assert "SQNR" in sqnr["layout"]["title"]["text"]
    assert len(at.dataframe[0].value) == 12  # 2 blocks x 6 Linears


@pytest.mark.slow
def test_last_compress_result_comes_first(app_cache):
    at = use_tiny_model(new_app(), "tiny-llama", live=False)
    at.selectbox(key="prune.method").set_value("magnitude").run()
    run_setting(at)
    at.switch_page("pages/layers.py").run()
    assert no_exception(at)
    choice = at.selectbox(key="layers.choice")
    assert choice.value == "current" and len(choice.options) == 1  # the run itself is not listed twice
    sparsity = array(figures(at)[0]["data"][0]["z"]).astype(float)
    assert sparsity.shape == (7, 2) and np.allclose(sparsity, 0.5, atol=0.01)  # magnitude 50% in every layer
