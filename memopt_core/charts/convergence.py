"""How an estimate converges: the running figure and its 95% band against tokens scored.

The one chart of the project that is a Vega-Lite spec (a plain dict) rather than a plotly figure:
the live page redraws it after every scored window, and Chromium spent about 0.05 CPU s on each
Vega-Lite redraw against 0.2 s on a plotly one (SmolLM2's live page, 8 windows), CPU that the
engine scoring the next window shares on a small machine."""
from __future__ import annotations

from typing import Any, Sequence

from memopt_core.charts.common import finite, series_color

CONVERGENCE_METRICS = {"perplexity_ratio": ("ratio_ci95", "Perplexity / original's (same tokens)"),
                       "perplexity": ("perplexity_ci95", "Perplexity"),
                       "kl_divergence": ("kl_ci95", "KL from original (nats/token)")}
SERIES = ("estimate", "95% interval", "exact")
BAND_COLOR = "rgba(76,120,168,0.35)"


def convergence_rows(estimates: Sequence[dict[str, Any]], metric: str = "perplexity_ratio") -> list[dict[str, Any]]:
    """One row per window of ``Estimate.to_dict()`` rows: tokens, estimate, low, high (None where
    there is no band yet or a value is infinite) and whether the row is exact."""
    band_key, _ = CONVERGENCE_METRICS[metric]
    values = finite(row.get(metric) for row in estimates)
    bands = [row.get(band_key) or (None, None) for row in estimates]
    lows, highs = finite(band[0] for band in bands), finite(band[1] for band in bands)
    return [{"tokens": row["tokens"], "estimate": value, "low": low, "high": high, "exact": bool(row.get("exact"))}
            for row, value, low, high in zip(estimates, values, lows, highs)]


def convergence(estimates: Sequence[dict[str, Any]], metric: str = "perplexity_ratio") -> dict[str, Any]:
    """Vega-Lite spec: estimate and 95% band of ``metric`` after each window, in scoring order.

    The band is drawn where it exists (the ``window`` interval has none after one window; rows
    without a value are left out, Vega-Lite's default for invalid data); the last point is marked
    "exact" when every window was scored. The x axis spans all windows from the first estimate on."""
    _, title = CONVERGENCE_METRICS[metric]
    last = estimates[-1] if estimates else None
    total = last["total_windows"] * (last["tokens"] // max(1, last["windows"])) if last else 0
    tokens = {"field": "tokens", "type": "quantitative", "title": "tokens scored",
              "scale": {"domain": [0, round(total * 1.02)]} if total else {}}
    value_axis = {"type": "quantitative", "title": title, "scale": {"zero": False}}
    color = {"scale": {"domain": list(SERIES), "range": [series_color(0), BAND_COLOR, series_color(3)]},
             "legend": {"orient": "right", "title": None}}  # in Streamlit, a legend above or below squashes the plot
    layers = [
        {"mark": {"type": "area"},
         "encoding": {"x": tokens, "y": {"field": "low", **value_axis}, "y2": {"field": "high"},
                      "color": {"datum": SERIES[1], **color}}},
        {"mark": {"type": "line", "point": True},
         "encoding": {"x": tokens, "y": {"field": "estimate", **value_axis}, "color": {"datum": SERIES[0], **color},
                      "tooltip": [{"field": "tokens", "format": ",", "title": "tokens scored"},
                                  {"field": "estimate", "format": ".4g"}]}},
        {"transform": [{"filter": "datum.exact"}],
         "mark": {"type": "point", "shape": "diamond", "size": 140, "filled": True, "opacity": 1},
         "encoding": {"x": tokens, "y": {"field": "estimate", **value_axis}, "color": {"datum": SERIES[2], **color},
                      "tooltip": [{"field": "estimate", "format": ".4g", "title": "exact"}]}}]
    return {"title": f"{title} as windows are scored", "height": 260,
            "data": {"values": convergence_rows(estimates, metric)}, "layer": layers}
