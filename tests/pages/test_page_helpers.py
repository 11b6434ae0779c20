"""The dashboard's helpers (ui/) tested directly: errors, uploads, the model cache, the weight view."""
from __future__ import annotations

import io
import zipfile

import pytest
import torch
from streamlit.runtime.download_data_util import convert_data_to_bytes_and_infer_mime
from streamlit.testing.v1 import AppTest

from memopt_core.compression.weight_view import grid_levels, layer_weights
from memopt_core.config import ModelSpec, QuantConfig, RunConfig
from memopt_core.errors import ConfigError, DataError
from page_support import app_cache  # noqa: F401
from ui import loaders
from ui.chart_glue import saving_kind, saving_phrase
from ui.saved_models import zip_folder
from ui.uploads import read_config_upload, save_text_upload


def _error_page():
    import streamlit as st

    from memopt_core.errors import ModelLoadError
    from ui.errors import user_errors

    with user_errors():
        raise ModelLoadError("model 'x' does not exist; choose 'a' or 'b'")
    with user_errors("chart"):
        print(1 / 0)
    st.markdown("still here")


def test_user_errors_turn_exceptions_into_one_line_messages():
    at = AppTest.from_function(_error_page).run()
    assert len(at.exception) == 0
    assert at.error[0].value == "model 'x' does not exist; choose 'a' or 'b'"
    assert at.error[1].value.startswith("chart: unexpected error (ZeroDivisionError: division by zero)")
    assert "\n" not in at.error[1].value
    assert at.markdown[0].value == "still here"  # the page went on


def test_text_upload_is_written_under_our_own_name_and_checked(app_cache):
    path = save_text_upload("../../etc/passwd", "Some text, ünïcode included.".encode())
    assert path.startswith(str(app_cache / "uploads")) and "passwd" not in path
    assert open(path, encoding="utf-8").read() == "Some text, ünïcode included."
    assert save_text_upload("again.txt", "Some text, ünïcode included.".encode()) == path  # same bytes, same file
    with pytest.raises(DataError, match="'bad.txt' is not UTF-8 text"):
        save_text_upload("bad.txt", b"\x80abc")
    with pytest.raises(DataError, match="'empty.txt' is empty"):
        save_text_upload("empty.txt", b"   \n")
    with pytest.raises(DataError, match="limit is 5,000,000"):
        save_text_upload("big.txt", b"a" * 5_000_001)
    assert len(list((app_cache / "uploads").glob("*.txt"))) == 1  # rejected files are not kept


def test_config_upload_must_be_a_json_object():
    assert read_config_upload("config.json", b'{"model_type": "gpt2"}') == {"model_type": "gpt2"}
    with pytest.raises(DataError, match="not valid JSON"):
        read_config_upload("config.json", b"{")
    with pytest.raises(DataError, match="JSON list, not the object"):
        read_config_upload("config.json", b"[1, 2]")
    with pytest.raises(DataError, match="not UTF-8"):
        read_config_upload("config.json", b"\xff")


def test_max_models_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(loaders.MAX_MODELS_ENV, raising=False)
    assert loaders.max_models() == 2
    monkeypatch.setenv(loaders.MAX_MODELS_ENV, "5")
    assert loaders.max_models() == 5
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(loaders.MAX_MODELS_ENV, bad)
        with pytest.raises(ConfigError, match="MEMOPT_MAX_MODELS"):
            loaders.max_models()


def test_the_engine_is_a_process_unless_the_environment_says_thread(monkeypatch):
    monkeypatch.delenv(loaders.ENGINE_ENV, raising=False)
    assert loaders.engine_kind() == "process"
    monkeypatch.setenv(loaders.ENGINE_ENV, "thread")
    assert loaders.engine_kind() == "thread"
    monkeypatch.setenv(loaders.ENGINE_ENV, "gpu")
    with pytest.raises(ConfigError, match="MEMOPT_ENGINE='gpu' must be 'process' or 'thread'"):
        loaders.engine_kind()


LAYER_WEIGHTS = "memopt_core.compression.weight_view:layer_weights"


def test_thread_runs_give_the_same_messages_as_the_engine(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMOPT_CACHE", str(tmp_path))
    config = RunConfig(ModelSpec("tiny-bert"), quant=QuantConfig(bits=4))
    monkeypatch.setenv(loaders.ENGINE_ENV, "thread")
    here = list(loaders.run_steps(config))
    monkeypatch.setenv(loaders.ENGINE_ENV, "process")
    assert not loaders.model_at_hand(config.model)  # this cache's engine has not started
    there = list(loaders.run_steps(config))
    assert [kind for kind, _ in here] == [kind for kind, _ in there] == ["loaded", "compressed", "result"]
    assert here[-1][1]["compressed"] == there[-1][1]["compressed"]  # an encoder: cosine, computed alike
    assert loaders.model_at_hand(config.model)  # the engine process holds the model now
    layer = here[-1][1]["layers"][0]["name"]
    assert loaders.with_model(config.model, LAYER_WEIGHTS, config, layer).before == \
        layer_weights(loaders.workbench(config.model), config, layer).before  # the same seed: the same sample


def test_the_least_recently_used_model_is_dropped():
    assert loaders.max_models() == 2  # the cache was built with the default
    specs = [ModelSpec("tiny-bert"), ModelSpec("tiny-bert", dtype="bfloat16"), ModelSpec("tiny-bert", dtype="float16")]
    first = loaders.workbench(specs[0])
    assert loaders.workbench(specs[0]) is first  # cached: the same shared object
    loaders.workbench(specs[1])
    loaders.workbench(specs[0])  # used again: now the most recent
    loaders.workbench(specs[2])
    assert loaders.is_loaded(specs[0]) and loaders.is_loaded(specs[2])
    assert not loaders.is_loaded(specs[1])


def test_grid_levels_match_a_hand_computed_symmetric_grid():
    weight = torch.tensor([[0.7, -0.35, 0.1, 0.0], [0.2, 0.1, -0.1, 0.05]])
    scale = torch.tensor(0.7 / 7).half().float().item()  # absmax / (2**(4-1) - 1), stored in fp16
    expected = [(code - 8) * scale for code in range(16)]
    assert grid_levels(weight, QuantConfig(bits=4)) == pytest.approx(expected, rel=1e-6)
    asym = grid_levels(weight, QuantConfig(bits=2, symmetric=False))
    assert len(asym) == 4 and 0.0 in asym  # an integer zero point keeps zero on the grid


def test_saving_phrase_says_real_or_simulated():
    def result(simulated, bits, quant):
        return {"memory": {"simulated": simulated, "bits_per_weight": bits, "dense_bits_per_weight": 32.0},
                "config": {"quant": quant}}
    assert saving_kind(result(True, 32.0, {"method": "rtn"})) == "simulated"
    assert "simulated" in saving_phrase(result(True, 32.0, {"method": "rtn"}))
    assert "packed integer codes" in saving_phrase(result(False, 4.25, {"method": "rtn"}))
    assert "bitmask" in saving_phrase(result(False, 20.0, None))
    assert saving_kind(result(False, 32.0, None)) == "none"


def test_zip_folder_holds_every_file(tmp_path):
    folder = tmp_path / "saved-model"
    (folder / "sub").mkdir(parents=True)
    (folder / "memopt.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"\x00" * 100)
    with zipfile.ZipFile(io.BytesIO(zip_folder(folder).read())) as archive:
        assert sorted(archive.namelist()) == ["saved-model/memopt.json", "saved-model/sub/weights.bin"]
        assert archive.read("saved-model/sub/weights.bin") == b"\x00" * 100


def test_zip_folder_is_data_a_download_button_accepts(tmp_path):
    """Streamlit's own conversion of download data (it refused the read-write temporary file)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    data, mime = convert_data_to_bytes_and_infer_mime(zip_folder(tmp_path / "model"),
                                                      unsupported_error=TypeError("refused"))
    assert mime == "application/octet-stream"
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["model/config.json"]
