"""The rotation report: rotation raises absmax/RMS (and error) of flat rows, lowers it for outlier rows."""
from __future__ import annotations

import torch
from torch import nn

from memopt_core.compression.rotation_report import activation_int4_error, layer_report, rotation_reports, summary
from memopt_core.primitives.formats.hadamard import random_signs, rotate_input
from memopt_core.config import QuantConfig


def test_flat_rows_lose_and_outlier_rows_gain_from_rotation():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, generator=generator)
    flat = (torch.randint(0, 16, (32, 128), generator=generator).float() - 7.5) / 7.5  # a uniform 16-level grid
    spiky = torch.randn(32, 128, generator=generator) * 0.02
    spiky[:, 5] = 1.0  # one huge weight per row
    cfg = QuantConfig(bits=4)
    flat_report, spiky_report = layer_report("flat", flat, x, cfg), layer_report("spiky", spiky, x, cfg)
    assert flat_report.absmax_to_rms[0] < 1.8 < 2.5 < flat_report.absmax_to_rms[1]  # uniform: sqrt(3); Gaussian of 128: ~2.9
    assert flat_report.other_tokens_error[1] > 2 * flat_report.other_tokens_error[0]
    assert spiky_report.absmax_to_rms[1] < 0.5 * spiky_report.absmax_to_rms[0]
    assert spiky_report.other_tokens_error[1] < 0.5 * spiky_report.other_tokens_error[0]


def test_error_share_counts_the_loudest_input_channels():
    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(1))
    x[:, 3] *= 30  # one channel carries most of the input energy
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    report = layer_report("layer", w, x, QuantConfig(bits=4), top_k=1)
    energy = x.pow(2).mean(0)
    assert abs(report.activation_share - (energy[3] / energy.sum()).item()) < 1e-6
    assert report.error_share[0] > 0.5 and report.error_share[1] > 0.5  # error through channel 3 dominates either way


def test_reports_cover_every_target_layer_through_hooks():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    reports = rotation_reports(model, torch.randn(3, 5, 64), QuantConfig(bits=4), names=["0", "2"])
    assert [r.layer for r in reports] == ["0", "2"]
    stats = summary(reports)
    assert 0 <= stats["layers_helped"] <= 1 and stats["absmax_to_rms_plain"] > 1


def test_first_token_error_is_measured_apart():
    """A first token whose input lies where the weight maps to almost nothing (an attention sink's
    value): plain rounding error stays small there, rotated error does not."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(32, 128, generator=generator) * 0.02
    w[:, :4] = 0.0005 * torch.randn(32, 4, generator=generator)  # the sink's channels barely reach the output
    x = torch.randn(2, 16, 128, generator=generator)
    x[:, 0] = 0.0
    x[:, 0, :4] = 100.0  # the first token lives in those channels only
    report = layer_report("v_proj", w, x, QuantConfig(bits=4))
    assert report.first_token_error[1] > 10 * report.first_token_error[0]
    assert report.other_tokens_error[0] < 0.1


def test_rotation_tames_activation_outliers_for_per_token_quantization():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(4))
    x[:, 7] = 80.0  # one outlier channel sets every token's scale
    plain = activation_int4_error(x)
    # by hand: the outlier takes the top level, every other value falls below half a step and rounds to 0
    assert plain > 0.9 * (x[:, [i for i in range(256) if i != 7]].pow(2).sum() / x.pow(2).sum()).item()
    assert activation_int4_error(rotate_input(x, random_signs(256))) < 0.2 * plain
