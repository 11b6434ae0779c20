"""A real browser against `streamlit run`: Debian's headless Chromium driven by Playwright.

Opens every page, picks tiny-llama, moves sliders, presses Run, waits for the plotly charts to
render and checks that no exception box appears. Screenshots go to test-artifacts/ (gitignored).
The server and browser helpers are those of scripts/screenshots.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from page_support import app_cache  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from screenshots import (EXCEPTION, PLOT, RUN_WAIT_MS, browser_tab, dashboard, live_off, open_page,  # noqa: E402
                         pick, screenshot, set_slider, wait_for_plots)

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def tab(app_cache):
    """A browser tab on a fresh `streamlit run` with its own results store; both always closed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with dashboard(env) as url, browser_tab(url) as page:
        yield page


def check_and_shoot(tab, name: str) -> None:
    assert tab.locator(EXCEPTION).count() == 0
    screenshot(tab, ARTIFACTS / f"{name}.png")


def metric_card(tab, label: str):
    """The value element of the metric card labelled ``label``."""
    return tab.locator('[data-testid="stMetric"]').filter(has_text=label).locator('[data-testid="stMetricValue"]')


def metric_value(tab, label: str) -> str:
    return metric_card(tab, label).inner_text()


def test_every_page_in_a_real_browser(tab):
    live_off(tab)
    assert tab.locator(PLOT).count() == 0  # nothing runs before Run

    pick(tab, "Model", "tiny-llama")
    set_slider(tab, "Max tokens", "128")
    set_slider(tab, "Sequence length (window)", "32")
    set_slider(tab, "Generated tokens", "2")
    tab.get_by_role("button", name="Run", exact=True).click()
    wait_for_plots(tab, 3)  # sparsity, bytes per layer, weight histogram
    assert metric_value(tab, "Perplexity, compressed")
    check_and_shoot(tab, "compress")

    open_page(tab, "Trade-offs")
    assert "tiny-llama" in tab.get_by_role("combobox", name="Model").input_value()  # kept across pages
    tab.get_by_role("button", name="Run sweep").click()
    wait_for_plots(tab, 3)
    check_and_shoot(tab, "tradeoffs")

    open_page(tab, "Layers")
    wait_for_plots(tab, 3)
    check_and_shoot(tab, "layers")

    open_page(tab, "Memory planner")
    wait_for_plots(tab, 1)
    four_bit = metric_value(tab, "Total (GiB)")
    set_slider(tab, "Weight bits", "2")
    # on a busy machine the rerun can start after settle() returned: wait for the card to change
    expect(metric_card(tab, "Total (GiB)")).not_to_have_text(four_bit, timeout=60_000)
    assert float(metric_value(tab, "Total (GiB)")) < float(four_bit)
    check_and_shoot(tab, "planner")

    open_page(tab, "Runs")
    wait_for_plots(tab, 1)
    check_and_shoot(tab, "runs")

    open_page(tab, "Deploy")  # the Compress page's setting, shipped as GGUF Q4_1 and read back
    export_and_check(tab, "llama.cpp", "Q4_1", "Download model.gguf")
    assert tab.locator('[data-testid="stAlert"]').filter(has_text="Q4_1 means W4A16 g32 asym-fmin").count() == 1
    assert metric_value(tab, "Perplexity (format's loader)") == metric_value(tab, "Perplexity (memopt)")
    check_and_shoot(tab, "deploy")
    export_and_check(tab, "ONNX Runtime", "int8", "Download the folder (zip)")  # ORT's own row
    assert float(metric_value(tab, "Perplexity (format's loader)")) > 1
    assert tab.get_by_text("re-quantizes the exported weights").count() >= 1  # says it is not memopt's codes
    check_and_shoot(tab, "deploy-onnx")


# Markdown texts of the page, leaving out the faded ones of the run before (Streamlit marks them stale).
SHOWN_TEXTS = ("[...document.querySelectorAll('[data-testid=\"stElementContainer\"]:not([data-stale=\"true\"]) "
               "[data-testid=\"stMarkdownContainer\"]')].map(e => e.innerText)")
RECORD = """() => {  // every 50 ms, note when the page first shows an estimate and the exact figure
  window.seen = [];
  window.recorder = setInterval(() => {
    for (const text of %s) {
      const kind = text.startsWith("Estimate from") ? "estimate" : text.startsWith("Exact: all") ? "exact" : null;
      if (kind && !window.seen.includes(kind)) window.seen.push(kind);
    }
  }, 50);
}""" % SHOWN_TEXTS


def test_live_mode_shows_an_estimate_then_the_exact_figure_without_run(tab):
    tab.get_by_text("Live", exact=True).wait_for()
    pick(tab, "Model", "tiny-llama")  # live is on for bundled models on the CPU
    set_slider(tab, "Max tokens", "2048")
    set_slider(tab, "Sequence length (window)", "32")  # 64 windows: estimates for a while
    set_slider(tab, "Generated tokens", "0")
    assert tab.get_by_role("button", name="Run", exact=True).count() == 0
    slider = tab.get_by_role("slider", name="Bit width")
    slider.focus()
    tab.evaluate(RECORD)
    slider.press("ArrowLeft")  # release one step lower: the run starts by itself
    try:
        tab.wait_for_function("window.seen.includes('exact')", timeout=600_000)
    except Exception as error:  # say what the page showed instead of a bare timeout
        raise AssertionError(f"seen {tab.evaluate('window.seen')}; page: {tab.evaluate(SHOWN_TEXTS)}") from error
    assert tab.evaluate("window.seen") == ["estimate", "exact"]  # first an estimate, then the exact figure
    assert tab.locator(EXCEPTION).count() == 0
    assert metric_value(tab, "Ratio to original").endswith("x")
    check_and_shoot(tab, "live")


def test_a_slider_release_ends_the_live_panels_hold(app_cache, tmp_path):
    """A timer rerun of the live panel holds the script thread until the run changes
    (ui/live_view.py). A widget change meanwhile reruns the page at once in a new thread (Streamlit's
    fast reruns) and stops the old one at its next yield point: the hold must reach one and end
    then, not when it times out (600 s here), or every slider move would leave a thread behind."""
    log = tmp_path / "holds.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMOPT_HOLD_LOG": str(log)}
    with dashboard(env, script="tests/pages/hold_app.py") as url, browser_tab(url) as tab:
        tab.get_by_text("Slider at 0").wait_for()
        tab.get_by_text("Holding in a timer rerun").wait_for()
        assert tab.get_by_text("Loading the model").count() == 1  # the panel drew before it held
        assert not log.exists()
        slider = tab.get_by_role("slider", name="Value")
        slider.focus()
        slider.press("ArrowRight")
        tab.get_by_text("Slider at 1").wait_for()
        for _ in range(120):
            if log.exists():
                break
            tab.wait_for_timeout(500)
        assert log.exists(), "the held thread was still holding 60 s after the slider release"
        assert log.read_text().splitlines()[0] == "hold ended: StopException"
        assert tab.locator(EXCEPTION).count() == 0


def export_and_check(tab, engine: str, type_name: str, download: str) -> None:
    """Choose the engine and type, export with the round trip, see the file size and the download."""
    pick(tab, "Target engine", engine)
    pick(tab, "Type", type_name)
    tab.get_by_role("button", name="Export").click()
    tab.get_by_role("button", name=download).wait_for(timeout=RUN_WAIT_MS)
    assert tab.get_by_role("heading", name=f"Exported: ").first.inner_text().endswith(type_name)
    files = metric_value(tab, "Files")
    assert files.endswith("MiB") and float(files.split()[0].replace(",", "")) > 0
    assert metric_value(tab, "Perplexity (format's loader)") != "-"  # the round trip ran
