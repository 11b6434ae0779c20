"""The dashboard's Streamlit settings that the product depends on."""
from __future__ import annotations

import tomllib
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / ".streamlit" / "config.toml"


def test_no_usage_statistics_and_no_full_collection_after_every_rerun():
    config = tomllib.loads(CONFIG.read_text())
    assert config["browser"]["gatherUsageStats"] is False  # nothing calls out at run time
    # A full collection after each rerun of the live cards (then every half second) held the GIL for
    # 0.3-0.5 s with a model loaded: the engine's thread waited, a setting took 3-5x longer.
    assert config["runner"]["postScriptGC"] is False
