"""A real browser against `streamlit run`: Debian's headless Chromium driven by Playwright.

Opens every page, picks tiny-llama, moves sliders, presses Run, waits for the plotly charts to
render and checks that no exception box appears. Screenshots go to test-artifacts/ (gitignored).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from page_support import app_cache  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PLOT = ".js-plotly-plot"
EXCEPTION = '[data-testid="stException"]'
WAIT_MS = 150_000  # generous for 2 shared cores; never a timing assertion


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("streamlit did not answer its health check")


@pytest.fixture
def server_url(app_cache):
    """`streamlit run app.py` on a free port with its own results store; always terminated."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                               "--server.port", str(port), "--server.address", "localhost",
                               "--browser.gatherUsageStats", "false"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://localhost:{port}"
        wait_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def page(server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.set_default_timeout(WAIT_MS)
            tab.goto(server_url)
            yield tab
        finally:
            browser.close()


def pick(tab, label: str, option: str) -> None:
    """Choose ``option`` (a substring of its text) in the selectbox labelled ``label``."""
    box = tab.locator('[data-testid="stSelectbox"]').filter(has_text=label).first
    box.click()
    tab.get_by_role("option", name=option, exact=False).first.click()


def slide_to_minimum(tab, label: str) -> None:
    """Keyboard-drive a slider to its first value, the way a user without a mouse would."""
    slider = tab.get_by_role("slider", name=label)
    slider.focus()
    slider.press("Home")
    tab.wait_for_timeout(300)


def settle(tab) -> None:
    """Wait until the script run triggered by the last interaction has finished."""
    tab.wait_for_timeout(500)
    tab.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")


def open_page(tab, title: str) -> None:
    tab.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).click()
    tab.get_by_role("heading", name=title, exact=True).wait_for()
    settle(tab)


def wait_for_plots(tab, count: int) -> None:
    tab.wait_for_function(f"document.querySelectorAll('{PLOT} .main-svg').length >= {count}", timeout=WAIT_MS)


def screenshot(tab, path: Path, width: int = 1400) -> None:
    """The whole page: Streamlit scrolls inside its main container, so the window is made as tall
    as that container's content for the picture, then put back."""
    height = tab.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    tab.set_viewport_size({"width": width, "height": max(1000, int(height))})
    tab.wait_for_timeout(800)  # let plotly redraw at the new size
    path.parent.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(path))
    tab.set_viewport_size({"width": width, "height": 1000})


def check_and_shoot(tab, name: str) -> None:
    assert tab.locator(EXCEPTION).count() == 0
    screenshot(tab, ARTIFACTS / f"{name}.png")


def test_every_page_in_a_real_browser(page):
    tab = page
    tab.get_by_role("button", name="Run", exact=True).wait_for()
    assert tab.locator(PLOT).count() == 0  # nothing runs before Run

    pick(tab, "Model", "tiny-llama")
    settle(tab)
    for label in ("Max tokens", "Sequence length (window)", "Generated tokens"):
        slide_to_minimum(tab, label)
        settle(tab)
    assert tab.get_by_role("slider", name="Max tokens").get_attribute("aria-valuetext") == "128"
    tab.get_by_role("button", name="Run", exact=True).click()
    wait_for_plots(tab, 3)  # sparsity, bytes per layer, weight histogram
    tab.get_by_text("Perplexity, compressed").first.wait_for()
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
    before = tab.get_by_text("GiB in all").first.inner_text()
    slide_to_minimum(tab, "Weight bits")
    settle(tab)
    assert tab.get_by_text("GiB in all").first.inner_text() != before
    check_and_shoot(tab, "planner")

    open_page(tab, "Runs")
    wait_for_plots(tab, 1)
    check_and_shoot(tab, "runs")
