"""The Compress page through AppTest, on the bundled tiny random models with small budgets."""
from __future__ import annotations

from pathlib import Path

import pytest

from memopt_core.config import ModelSpec
from page_support import (app_cache, array, errors, figures, new_app, no_exception, run_setting, titles,  # noqa: F401
                          use_tiny_model, vega_tables, wait_for_run)
from ui import loaders


def metric_labels(at) -> list[str]:
    return [metric.label for metric in at.metric]


def test_first_render_shows_the_settings_and_loads_no_model(app_cache):
    at = new_app()
    assert no_exception(at)
    assert at.selectbox(key="model.choice").value == "smollm2-135m"
    assert "cpu" in at.selectbox(key="model.device").options
    assert at.select_slider(key="quant.bits").options == ["2", "3", "4", "5", "6", "8", "16 (none)"]
    assert at.selectbox(key="prune.method").value == "none"
    assert at.toggle(key="compress.live").value  # a bundled model on the CPU: live by default
    assert not at.get("plotly_chart") and not at.get("vega_lite_chart") and not at.metric
    assert "compress.live_run" not in at.session_state  # opening the page is not a setting change
    assert not loaders.is_loaded(ModelSpec("smollm2-135m")) and not loaders.model_at_hand(ModelSpec("smollm2-135m"))
    at.toggle(key="compress.live").set_value(False).run()
    assert at.button(key="compress.run").label == "Run"


@pytest.mark.slow
def test_run_on_a_causal_lm_shows_quality_memory_charts_and_generations(app_cache):
    at = use_tiny_model(new_app())
    at.selectbox(key="prune.method").set_value("magnitude").run()
    at.slider(key="prune.ratio").set_value(0.5)
    run_setting(at)
    assert no_exception(at) and not errors(at)
    labels = metric_labels(at)
    for label in ("Perplexity, original", "Perplexity, compressed", "Ratio to original", "KL from original",
                  "Top-1 agreement",
                  "Dense (GiB)", "Stored (GiB)", "Measured (GiB)", "Bits per weight",
                  "Smaller by"):
        assert label in labels
    compressed = at.metric[labels.index("Perplexity, compressed")]
    assert compressed.delta is not None  # the change from the original
    sparsity, layer_bytes, histogram = figures(at)
    (convergence,) = vega_tables(at)
    ratio = at.metric[labels.index("Ratio to original")].value
    assert f"{convergence['estimate'].iloc[-1]:.4f}x" == ratio  # the last step is the exact figure
    assert convergence["exact"].tolist() == [False, True]
    assert convergence["tokens"].tolist() == [63 * k for k in (1, 2)]  # 128 tokens: 2 windows of 64
    assert sum(len(array(trace["y"])) for trace in sparsity["data"]) == 14  # 2 blocks x 7 Linears of tiny-llama
    assert [trace["name"] for trace in layer_bytes["data"]] == ["before (dense)", "after (stored)"]
    assert [trace["name"] for trace in histogram["data"]] == ["original", "compressed", "quantization grid", "grid lines"]
    assert any("saving is real" in caption.value for caption in at.caption)
    assert len(at.code) == 2  # original and compressed generations side by side
    assert any("random weights" in info.value for info in at.info)
    how = [expander.label for expander in at.expander if expander.label.startswith("How it works")]
    assert how == ["How it works: magnitude pruning", "How it works: W4A16 g128 sym"] and at.latex


@pytest.mark.slow
def test_run_on_an_encoder_shows_similarity_and_accuracy_with_intervals(app_cache):
    at = use_tiny_model(new_app(), "tiny-bert")
    at.select_slider(key="quant.bits").set_value(3)
    at.radio(key="quant.storage").set_value("fake")
    run_setting(at)
    assert no_exception(at) and not errors(at)
    labels = metric_labels(at)
    assert "Cosine similarity to original" in labels and "Accuracy, compressed" in labels
    accuracy = at.metric[labels.index("Accuracy, compressed")]
    assert "95% CI" in accuracy.help
    assert "Perplexity, compressed" not in labels and len(at.code) == 0
    assert any("simulated" in caption.value for caption in at.caption)  # fake quantization says so
    assert "Sparsity per layer (zeros counted from the weights)" in titles(at)


@pytest.mark.slow
def test_a_new_session_answers_stored_settings_without_loading(app_cache, monkeypatch):
    first = run_setting(use_tiny_model(new_app(), "tiny-bert"))
    assert no_exception(first) and first.metric

    def refuse(spec):
        raise AssertionError("the model must not be loaded for a stored result")

    monkeypatch.setattr(loaders, "_cached_workbench", refuse)
    monkeypatch.setattr(loaders, "_cached_engine", refuse)
    monkeypatch.setattr(loaders, "is_loaded", lambda spec: False)
    monkeypatch.setattr(loaders, "model_at_hand", lambda spec: False)
    second = use_tiny_model(new_app(), "tiny-bert")  # a reload: a new session, same settings
    assert no_exception(second) and not errors(second)
    assert any("from the results store" in header.value for header in second.header)
    assert "Cosine similarity to original" in metric_labels(second)
    assert any(button.key == "compress.load_weights" for button in second.button)  # weights only on request


def test_unknown_hub_model_offline_is_an_error_not_a_traceback(app_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = new_app()
    at.selectbox(key="model.choice").set_value("other").run()
    at.text_input(key="model.custom").input("nobody/no-such-model-anywhere").run()
    wait_for_run(at)  # live mode runs the new setting at once
    assert no_exception(at)
    assert any("could not load 'nobody/no-such-model-anywhere'" in message for message in errors(at))
    assert not at.metric
    at.text_input(key="model.custom").input("not a valid id!").run()
    assert no_exception(at) and any("neither a bundled model" in message for message in errors(at))


@pytest.mark.slow
def test_uploaded_text_is_validated(app_cache):
    at = use_tiny_model(new_app(), live=False)
    at.radio(key="eval.text").set_value("upload").run()
    assert at.button(key="compress.run").disabled  # nothing to evaluate on yet
    at.file_uploader(key="eval.upload").set_value(("latin.txt", "caf\xe9".encode("latin-1"), "text/plain")).run()
    assert no_exception(at)
    assert any("'latin.txt' is not UTF-8" in message for message in errors(at))
    assert at.button(key="compress.run").disabled
    big = b"a" * 5_000_001
    at.file_uploader(key="eval.upload").set_value(("big.txt", big, "text/plain")).run()
    assert any("the limit is 5,000,000" in message for message in errors(at))
    good = ("A sentence of plain English text. " * 300).encode()
    at.file_uploader(key="eval.upload").set_value(("mine.txt", good, "text/plain")).run()
    assert not errors(at) and not at.button(key="compress.run").disabled
    saved = list((app_cache / "uploads").glob("*.txt"))
    assert len(saved) == 1 and "mine" not in saved[0].name  # our own file name, never the upload's
    run_setting(at)
    assert no_exception(at) and not errors(at) and at.metric


@pytest.mark.slow
def test_settings_survive_a_page_switch(app_cache):
    at = use_tiny_model(new_app())
    at.selectbox(key="prune.method").set_value("magnitude").run()
    at.slider(key="prune.ratio").set_value(0.3)
    at.select_slider(key="quant.bits").set_value(8).run()
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/compress.py").run()
    assert at.selectbox(key="model.choice").value == "tiny-llama"
    assert at.selectbox(key="prune.method").value == "magnitude"
    assert at.slider(key="prune.ratio").value == 0.3
    assert at.select_slider(key="quant.bits").value == 8


@pytest.mark.slow
def test_save_compressed_model_writes_a_folder_the_runs_page_offers(app_cache):
    at = run_setting(use_tiny_model(new_app(), "tiny-bert"))
    at.button(key="compress.save").click().run()
    assert no_exception(at) and not errors(at)
    folders = [p for p in (app_cache / "saved").iterdir() if (p / "memopt.json").is_file()]
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    assert any(str(folders[0]) in message.value for message in at.success)
    at.switch_page("pages/runs.py").run()
    assert any(button.label == "Download zip" for button in at.get("download_button"))


def test_wrong_settings_show_an_error_and_keep_the_page(app_cache):
    at = use_tiny_model(new_app(), live=False)
    at.select_slider(key="eval.max_tokens").set_value(128)
    at.select_slider(key="eval.seq_len").set_value(1024).run()  # no full window fits in 128 tokens
    assert no_exception(at)
    assert any("below the sequence length" in message for message in errors(at))
    assert at.button(key="compress.run").disabled
    assert Path(app_cache).is_dir()


@pytest.mark.slow
def test_two_sessions_keep_their_own_results(app_cache):
    alice = use_tiny_model(new_app(), "tiny-bert", live=False)
    alice.select_slider(key="quant.bits").set_value(8).run()
    run_setting(alice)
    bob = use_tiny_model(new_app(), "tiny-bert", live=False)
    bob.select_slider(key="quant.bits").set_value(3).run()
    assert not bob.metric  # alice's result is not bob's: his settings were never run
    run_setting(bob)
    alice.run()
    assert any("W8A16" in header.value for header in alice.header)
    assert any("W3A16" in header.value for header in bob.header)
    assert not any("W3A16" in header.value for header in alice.header)


@pytest.mark.slow
def test_a_calibrated_result_names_its_calibration_data(app_cache):
    at = use_tiny_model(new_app())
    at.selectbox(key="prune.method").set_value("wanda").run()
    at.radio(key="quant.method").set_value("gptq").run()
    run_setting(at)
    assert no_exception(at) and not errors(at)
    heading = next(h.value for h in at.header if "tiny" in h.value)
    assert "wanda 50% + GPTQ W4A16" in heading and "calibrated on both 64x512 seed 0" in heading
