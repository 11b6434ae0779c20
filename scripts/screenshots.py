"""Screenshots of every dashboard page for the README, taken in headless Chromium.

    python scripts/screenshots.py                      # SmolLM2, 1024 tokens -> docs/screenshots/*.png
    python scripts/screenshots.py --model tiny-llama --out /tmp/shots

Starts ``streamlit run app.py`` on a free port with a throwaway results store (the converted
models and tokenizers of your memopt cache are reused, not rebuilt), drives each page the way a
user would and saves ``<page>.png``. The helpers below are shared with tests/test_browser.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright's own download does not work offline
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PLOT = ".js-plotly-plot"
EXCEPTION = '[data-testid="stException"]'
WAIT_MS = 300_000
RUN_WAIT_MS = 1_800_000  # a SmolLM2 sweep on a busy 2-core machine can take many minutes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("streamlit did not answer its health check")


@contextmanager
def dashboard(env: dict[str, str], script: str = "app.py") -> Iterator[str]:
    """``streamlit run app.py`` (or ``script``, relative to the repository) on a free localhost
    port; yields its URL; always terminated."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true",
               "--server.port", str(port), "--server.address", "localhost", "--browser.gatherUsageStats", "false"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://localhost:{port}"
        _wait_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextmanager
def browser_tab(url: str, width: int = 1400) -> Iterator:
    """A Playwright page on ``url`` in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": width, "height": 1000})
            tab.set_default_timeout(WAIT_MS)
            tab.goto(url)
            yield tab
        finally:
            browser.close()


def settle(tab) -> None:
    """Wait until the script run triggered by the last interaction has finished."""
    tab.wait_for_timeout(500)
    tab.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")


def pick(tab, label: str, option: str) -> None:
    """Choose the option whose text contains ``option`` in the selectbox labelled ``label``."""
    tab.locator('[data-testid="stSelectbox"]').filter(has_text=label).first.click()
    tab.get_by_role("option", name=option, exact=False).first.click()
    settle(tab)


def set_slider(tab, label: str, value: str) -> None:
    """Move a slider with the keyboard (Home, then right arrows) until it shows ``value``."""
    slider = tab.get_by_role("slider", name=label)
    slider.focus()
    slider.press("Home")
    for _ in range(100):
        if slider.get_attribute("aria-valuetext") == value:
            break
        slider.press("ArrowRight")
    settle(tab)
    if slider.get_attribute("aria-valuetext") != value:
        raise RuntimeError(f"slider {label!r} cannot show {value!r}")


def live_off(tab) -> None:
    """Turn the Compress page's live mode off, so settings wait for the Run button."""
    tab.get_by_text("Live", exact=True).wait_for()
    tab.get_by_text("Live", exact=True).click()
    tab.get_by_role("button", name="Run", exact=True).wait_for()
    settle(tab)


def choose_radio(tab, label: str) -> None:
    tab.get_by_text(label, exact=True).first.click()
    settle(tab)


def open_page(tab, title: str) -> None:
    """Follow the sidebar link (same session, so the settings carry over)."""
    tab.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).click()
    tab.get_by_role("heading", name=title, exact=True).wait_for()
    settle(tab)


def wait_for_plots(tab, count: int, timeout_ms: int = WAIT_MS) -> None:
    """Until ``count`` plotly charts have drawn their SVG."""
    drawn = f"[...document.querySelectorAll('{PLOT}')].filter(e => e.querySelector('.main-svg')).length"
    tab.wait_for_function(f"{drawn} >= {count}", timeout=timeout_ms)


def screenshot(tab, path: Path, width: int = 1400) -> None:
    """The whole page: Streamlit scrolls inside its main container, so the window is made as tall
    as that container's content for the picture, then put back."""
    for _ in range(2):  # a taller window can change the layout once more
        height = tab.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        tab.set_viewport_size({"width": width, "height": max(1000, int(height))})
        tab.wait_for_timeout(800)  # let plotly redraw at the new size
    path.parent.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(path))
    tab.set_viewport_size({"width": width, "height": 1000})


def throwaway_cache(source: Path) -> Path:
    """A new cache folder sharing ``source``'s converted models and tokenizers (an empty store)."""
    cache = Path(tempfile.mkdtemp(prefix="memopt-shots-"))
    for name in ("models", "tokenizers"):
        (source / name).mkdir(parents=True, exist_ok=True)
        (cache / name).symlink_to(source / name, target_is_directory=True)
    return cache


def shoot_all(tab, out: Path, model: str, max_tokens: str) -> None:
    live_off(tab)
    pick(tab, "Model", model)
    set_slider(tab, "Max tokens", max_tokens)
    set_slider(tab, "Sequence length (window)", "256")
    pick(tab, "Prune method", "magnitude (smallest")
    set_slider(tab, "Prune ratio", "0.25")
    pick(tab, "Scale per", "groups of 64")
    tab.get_by_role("button", name="Run", exact=True).click()
    wait_for_plots(tab, 3, RUN_WAIT_MS)
    tab.get_by_text("How it works: magnitude pruning").click()
    screenshot(tab, out / "compress.png")
    open_page(tab, "Trade-offs")
    tab.get_by_role("button", name="Run sweep").click()
    wait_for_plots(tab, 3, RUN_WAIT_MS)
    screenshot(tab, out / "tradeoffs.png")
    open_page(tab, "Layers")
    wait_for_plots(tab, 3)
    screenshot(tab, out / "layers.png")
    shoot_sensitivity(tab, out)
    open_page(tab, "Memory planner")
    wait_for_plots(tab, 1)
    screenshot(tab, out / "planner.png")
    open_page(tab, "Runs")
    wait_for_plots(tab, 1)
    screenshot(tab, out / "runs.png")
    shoot_deploy(tab, out)
    if tab.locator(EXCEPTION).count():
        raise RuntimeError("a page shows an exception; see the screenshots")


def shoot_sensitivity(tab, out: Path) -> None:
    """Rank SmolLM2's blocks at 3 bits, then plan 2/3/4/8 bits per block under 3.5 bits per weight."""
    open_page(tab, "Sensitivity")
    set_slider(tab, "Bit width", "3")
    set_slider(tab, "Tokens scored per probe", "512")
    tab.get_by_role("button", name="Measure sensitivity").click()
    wait_for_plots(tab, 1, RUN_WAIT_MS)
    set_slider(tab, "Budget: stored bits per weight of the targeted layers", "3.50")
    tab.get_by_role("button", name="Plan, apply and measure").click()
    wait_for_plots(tab, 2, RUN_WAIT_MS)
    screenshot(tab, out / "sensitivity.png")


def shoot_deploy(tab, out: Path) -> None:
    """Ship the Compress page's setting as GGUF (the type that holds its codes), read back and scored."""
    open_page(tab, "Deploy")
    pick(tab, "Target engine", "llama.cpp")
    tab.get_by_role("button", name="Export").click()
    tab.get_by_role("button", name="Download model.gguf").wait_for(timeout=RUN_WAIT_MS)
    settle(tab)
    screenshot(tab, out / "deploy.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--model", default="smollm2-135m", help="a bundled model key")
    parser.add_argument("--max-tokens", default="1024")
    parser.add_argument("--only-sensitivity", action="store_true", help="only the Sensitivity page")
    parser.add_argument("--only-deploy", action="store_true", help="only the Deploy page (the default setting)")
    args = parser.parse_args()
    source = Path(os.environ.get("MEMOPT_CACHE") or Path.home() / ".cache" / "memopt")
    cache = throwaway_cache(source)
    env = {**os.environ, "MEMOPT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        with dashboard(env) as url, browser_tab(url) as tab:
            if args.only_sensitivity or args.only_deploy:
                tab.get_by_text("Live", exact=True).wait_for()
                pick(tab, "Model", args.model)
                (shoot_sensitivity if args.only_sensitivity else shoot_deploy)(tab, args.out)
            else:
                shoot_all(tab, args.out, args.model, args.max_tokens)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # removes the links, never the shared models they point to
    print(f"screenshots written to {args.out}")


if __name__ == "__main__":
    main()
