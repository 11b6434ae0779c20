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

from page_support import app_cache  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from screenshots import (EXCEPTION, PLOT, RUN_WAIT_MS, browser_tab, dashboard, open_page, pick,  # noqa: E402
                         screenshot, set_slider, settle, wait_for_plots)

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


def metric_value(tab, label: str) -> str:
    card = tab.locator('[data-testid="stMetric"]').filter(has_text=label)
    return card.locator('[data-testid="stMetricValue"]').inner_text()


def test_every_page_in_a_real_browser(tab):
    tab.get_by_role("button", name="Run", exact=True).wait_for()
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
    settle(tab)
    assert float(metric_value(tab, "Total (GiB)")) < float(four_bit)
    check_and_shoot(tab, "planner")

    open_page(tab, "Runs")
    wait_for_plots(tab, 1)
    check_and_shoot(tab, "runs")

    open_page(tab, "Deploy")  # the Compress page's setting, shipped as GGUF and read back
    tab.get_by_role("button", name="Export").click()
    tab.get_by_role("button", name="Download model.gguf").wait_for(timeout=RUN_WAIT_MS)
    assert metric_value(tab, "Perplexity (format's loader)") == metric_value(tab, "Perplexity (memopt)")
    check_and_shoot(tab, "deploy")
