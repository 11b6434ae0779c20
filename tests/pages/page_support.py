"""Shared helpers of the page tests (AppTest): a fresh results store per test, small budgets."""
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
RUN_TIMEOUT = 180  # seconds; generous for 2 shared cores, never a timing assertion


@pytest.fixture
def app_cache(tmp_path, monkeypatch) -> Path:
    """A memopt cache of its own (an empty results store) that shares the converted tokenizers and
    models of the session-wide test cache, so tiny-llama does not rebuild SmolLM2's tokenizer."""
    shared = Path(os.environ["MEMOPT_CACHE"])
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("tokenizers", "models"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(shared / name, target_is_directory=True)
    monkeypatch.setenv("MEMOPT_CACHE", str(cache))
    return cache


def new_app() -> AppTest:
    """A new browser session on the app (first page: Compress), already run once."""
    return AppTest.from_file(APP, default_timeout=RUN_TIMEOUT).run()


def use_tiny_model(at: AppTest, model: str = "tiny-llama", live: bool = True) -> AppTest:
    """Pick a tiny bundled model and the smallest evaluation budget; ``live=False`` turns live mode
    off first, so nothing runs until Run is pressed (pages other than Compress have no live mode)."""
    if any(toggle.key == "compress.live" for toggle in at.toggle):
        at.toggle(key="compress.live").set_value(live)
    at.selectbox(key="model.choice").set_value(model)
    at.select_slider(key="eval.max_tokens").set_value(128)
    at.select_slider(key="eval.seq_len").set_value(64)
    at.slider(key="eval.gen_tokens").set_value(4)
    return at.run()


def figures(at: AppTest) -> list[dict]:
    """The plotly figures on the page, as the JSON the browser receives."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def vega_tables(at: AppTest) -> list:
    """The data of each Vega-Lite chart on the page (Streamlit sends it as Arrow), as DataFrames."""
    import pyarrow

    return [pyarrow.ipc.open_stream(chart.proto.data.data).read_pandas() for chart in at.get("vega_lite_chart")]


def titles(at: AppTest) -> list[str]:
    return [figure["layout"]["title"]["text"] for figure in figures(at)]


def no_exception(at: AppTest) -> bool:
    return len(at.exception) == 0


def errors(at: AppTest) -> list[str]:
    return [error.value for error in at.error]


def array(value) -> np.ndarray:
    """A figure array from its JSON: a plain list, or plotly's typed-array form {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        data = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return data.reshape([int(n) for n in str(shape).split(",")]) if shape else data
    return np.array(value, dtype=float)


LIVE_RUN = "compress.live_run"


def wait_for_run(at: AppTest, timeout: float = RUN_TIMEOUT) -> AppTest:
    """Rerun the page until this session's run (started by live mode or Run) has finished; the
    fragment's timer does not tick in AppTest, so each rerun is what a poll would show."""
    deadline = time.monotonic() + timeout
    while True:
        run = at.session_state[LIVE_RUN] if LIVE_RUN in at.session_state else None
        if run is None or run.snapshot().finished:
            return at.run()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not finish in {timeout} s (stage {run.snapshot().stage})")
        run.thread.join(0.2)
        at.run()


def run_setting(at: AppTest) -> AppTest:
    """Press Run (live mode off) or let live mode run the current setting, then wait for the result."""
    if at.toggle(key="compress.live").value:
        return wait_for_run(at.run())
    return wait_for_run(at.button(key="compress.run").click().run())
