"""The Memory planner through AppTest: presets, uploads, sliders; no weights are loaded."""
from __future__ import annotations

import json

import pytest

from page_support import app_cache, errors, figures, new_app, no_exception  # noqa: F401

TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}


def open_planner():
    return new_app().switch_page("pages/planner.py").run()


def total(at) -> str:
    return next(metric.value for metric in at.metric if metric.label == "Total (GiB)")


def test_preset_estimate_shows_cards_stack_and_fits_table(app_cache):
    at = open_planner()
    assert no_exception(at) and not errors(at)
    assert at.selectbox(key="planner.preset").value == "llama-3-8b"
    stack = figures(at)[0]
    assert [trace["name"] for trace in stack["data"]] == ["weights", "KV cache", "activations (rough)"]
    fits = at.dataframe[0].value
    assert "this machine (free RAM)" in list(fits["memory"]) and set(fits["fits"]) <= {"yes", "no"}
    four_bit = total(at)
    at.select_slider(key="planner.bits").set_value(16).run()
    assert total(at) != four_bit
    assert float(total(at)) > float(four_bit)


def test_a_huge_context_does_not_fit_small_gpus(app_cache):
    at = open_planner()
    at.selectbox(key="planner.preset").set_value("llama-3-70b").run()
    at.select_slider(key="planner.context").set_value(131072).run()
    fits = at.dataframe[0].value.set_index("memory")["fits"]
    assert fits["16 GiB GPU (T4, V100 16GB)"] == "no"


def test_uploaded_config_is_validated(app_cache):
    at = open_planner()
    at.radio(key="planner.source").set_value("upload").run()
    uploader = at.file_uploader(key="planner.upload")
    uploader.set_value(("config.json", b"{not json", "application/json")).run()
    assert no_exception(at) and any("not valid JSON" in message for message in errors(at))
    at.file_uploader(key="planner.upload").set_value(("config.json", b"\xff\xfe", "application/json")).run()
    assert any("not UTF-8" in message for message in errors(at))
    no_type = json.dumps({"hidden_size": 64}).encode()
    at.file_uploader(key="planner.upload").set_value(("config.json", no_type, "application/json")).run()
    assert any("model_type" in message for message in errors(at))
    good = json.dumps(TINY_CONFIG).encode()
    at.file_uploader(key="planner.upload").set_value(("config.json", good, "application/json")).run()
    assert no_exception(at) and not errors(at)
    assert figures(at) and float(total(at)) > 0


@pytest.mark.slow
def test_compress_page_model_uses_its_config_without_loading(app_cache):
    at = new_app()
    at.selectbox(key="model.choice").set_value("minilm-l6").run()
    at.switch_page("pages/planner.py").run()
    at.radio(key="planner.source").set_value("compress").run()
    assert no_exception(at) and not errors(at)
    assert any("minilm-l6" in header.value for header in at.subheader)
    assert next(m.value for m in at.metric if m.label == "KV cache (GiB)") == "0"  # an encoder has none
