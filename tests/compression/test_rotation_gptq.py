"""GPTQ in the rotated basis: the solver sees W Q and the rotated inputs' Hessian Q^T H Q."""
from __future__ import annotations

import torch

from gptq_support import correlated_inputs, hessian, output_error, weight
from memopt_core.compression.calibration_data import CalibrationSet
from memopt_core.compression.compress import compress_copy
from memopt_core.compression.format_layers import RotatedLinear
from memopt_core.compression.layers import QuantLinear
from memopt_core.config import ModelSpec, QuantConfig, RunConfig
from memopt_core.primitives.formats.hadamard import random_signs, rotate_hessian, rotate_input, rotate_weight, \
    unrotate_weight
from memopt_core.primitives.gptq import gptq_quantize
from memopt_core.primitives.quant import dequantize, quantize_weight


def test_gptq_on_rotated_weight_and_hessian_beats_rtn_in_the_same_basis():
    x, w = correlated_inputs(512, 128), weight(32, 128)
    signs = random_signs(128).double()
    rotated_x, rotated_w = rotate_input(x, signs), rotate_weight(w, signs)
    assert torch.allclose(rotate_hessian(hessian(x), signs), hessian(rotated_x), atol=1e-9)
    cfg = QuantConfig(bits=3)
    gptq = unrotate_weight(dequantize(gptq_quantize(rotated_w, rotate_hessian(hessian(x), signs), cfg)).double(), signs)
    rtn = unrotate_weight(dequantize(quantize_weight(rotated_w, cfg)).double(), signs)
    assert output_error(x, w, gptq) < 0.8 * output_error(x, w, rtn)


def test_calibrated_run_with_rotation_stores_rotated_layers_and_tracks_the_original(tiny_llama):
    tokens = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
    held_out = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(9))
    errors = {}
    for method in ("rtn", "gptq"):
        config = RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(method=method, bits=3, rotate="hadamard"))
        compressed = compress_copy(tiny_llama, config, calibration=CalibrationSet(tokens, {}))
        layers = [compressed.model.get_submodule(n) for n in compressed.target_names]
        assert all(isinstance(l, RotatedLinear) and isinstance(l.inner, QuantLinear) for l in layers)
        with torch.no_grad():
            errors[method] = (compressed.model(held_out).logits - tiny_llama(held_out).logits).pow(2).mean().item()
    assert errors["gptq"] < errors["rtn"]
