"""Result objects -> plotly figures. Pure (no Streamlit): testable on the figure's data.

Every figure's title says what it shows; callers add the one-line caption about whether the
memory saving is real (packed storage) or simulated (fake quantization, masks held dense).
Infinite values (an exact reconstruction has SQNR +inf dB, a diverged model perplexity +inf)
are drawn as gaps and named in the hover text: JSON and colour scales cannot hold infinity.

The parts: ``common.py`` (palette, gaps, hover text, quality axis), ``layers.py`` (one run's layers),
``tradeoffs.py`` (sweeps), ``planner.py``, ``formats.py`` (the formats comparison) and
``convergence.py`` (a live estimate and its band against tokens scored: a Vega-Lite spec, the one
chart redrawn after every scored window, where plotly cost the browser about four times the CPU).
The charts used by the pages are importable from ``memopt_core.charts``.
"""
from memopt_core.charts.common import finite, log_ticks, series_color
from memopt_core.charts.layers import bytes_by_layer, layer_heatmap, sparsity_by_layer, weight_histogram
from memopt_core.charts.planner import memory_stack
from memopt_core.charts.tradeoffs import quality_vs_bits, ratio_bits_heatmap, tradeoff_memory

__all__ = ["bytes_by_layer", "finite", "layer_heatmap", "log_ticks", "memory_stack", "quality_vs_bits",
           "ratio_bits_heatmap", "series_color", "sparsity_by_layer", "tradeoff_memory", "weight_histogram"]
