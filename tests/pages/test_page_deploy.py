"""The Deploy page through AppTest: the engines table, k-quants explained, and an export of the tiny
Llama at Q4_1 with its round trip and a download."""
from __future__ import annotations

import pytest

from page_support import app_cache, errors, new_app, no_exception, use_tiny_model  # noqa: F401


def open_deploy():
    return new_app().switch_page("pages/deploy.py").run()


def test_table_of_engines_and_k_quants_are_explained(app_cache):
    at = open_deploy()
    assert no_exception(at) and not errors(at)
    table = at.dataframe[-1].value
    assert list(table["engine"]) == ["llama.cpp / Ollama / LM Studio", "vLLM / SGLang", "ONNX Runtime", "transformers"]
    assert table.loc[0, "W4 g32 asym float-min"] == "Q4_1, exact (the Q4_1 grid)"
    at.selectbox(key="deploy.type.gguf").set_value("Q4_K").run()
    assert any("blocks of 256" in warning.value and "576" in warning.value for warning in at.warning)
    assert at.button(key="deploy.export").disabled


@pytest.mark.slow
def test_export_tiny_llama_to_gguf_q4_1_and_verify(app_cache):
    at = use_tiny_model(open_deploy())
    at.selectbox(key="deploy.type.gguf").set_value("Q4_1").run()
    assert any("Q4_1** means W4A16 g32 asym-fmin" in info.value for info in at.info)
    at.button(key="deploy.plan_button").click().run()
    assert no_exception(at) and not errors(at)
    plan = at.dataframe[0].value
    assert set(plan["becomes"]) == {"Q4_1"} and plan["exact"].all()
    at.button(key="deploy.export").click().run()
    assert no_exception(at) and not errors(at)
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Perplexity (memopt)"] == metrics["Perplexity (format's loader)"]
    assert any("max |weight - memopt's| 0" in caption.value for caption in at.caption)
    assert [button.label for button in at.get("download_button")] == ["Download model.gguf"]


def pick_onnx_type(at, type_name: str) -> None:
    """Target engine ONNX Runtime, then its type ``type_name``."""
    engine = at.selectbox(key="deploy.engine")
    engine.set_value(next(name for name in engine.options if name.startswith("ONNX Runtime"))).run()
    at.selectbox(key="deploy.type.onnx").set_value(type_name).run()


@pytest.mark.slow
def test_export_tiny_llama_to_onnx_runtime_int8_offers_the_folder_as_a_zip(app_cache):
    at = use_tiny_model(open_deploy())
    pick_onnx_type(at, "int8")
    at.button(key="deploy.export").click().run(timeout=600)
    assert no_exception(at) and not errors(at)
    metrics = {metric.label: metric.value for metric in at.metric}
    assert float(metrics["Perplexity (format's loader)"]) > 1  # ONNX Runtime's own int8, run in onnxruntime
    assert [button.label for button in at.get("download_button")] == ["Download the folder (zip)"]


@pytest.mark.slow
def test_onnx_int4_codes_keeps_a_fitting_setting_and_plans_matmulnbits(app_cache):
    at = use_tiny_model(open_deploy())
    pick_onnx_type(at, "int4-codes")
    # the page's default W4 per-channel setting fits MatMulNBits, so it is shipped as it is (no swap)
    assert not any("means" in info.value for info in at.info)
    at.button(key="deploy.plan_button").click().run()
    assert no_exception(at) and not errors(at)
    plan = at.dataframe[0].value
    assert set(plan["becomes"]) == {"int4-codes", "fp32"} and plan["exact"].all()  # lm_head stays float
    # per-channel rows of 64 / 128 inputs: one block a row, 4 bits + memopt's fp16 scale per 64 / 128 weights
    assert set(plan.loc[plan["becomes"] == "int4-codes", "bpw in format"]) == {4 + 16 / 64, 4 + 16 / 128}
