"""QuantConfig's number formats, rotation and histogram ranges: validation, normalisation, labels,
and store keys that do not move for the integer grid."""
import dataclasses

import pytest

from memopt_core.config import ModelSpec, PruneConfig, QuantConfig, RunConfig
from memopt_core.errors import ConfigError
from memopt_core.runs.identity import setting_identity


@pytest.mark.parametrize("fmt, bits, granularity, group", [
    ("nf4", 4, "group", 64), ("mxfp4", 4, "group", 32), ("nvfp4", 4, "group", 16), ("q2_k", 2, "group", 256),
    ("q3_k", 3, "group", 256), ("q4_k", 4, "group", 256), ("q6_k", 6, "group", 256),
    ("fp8-e4m3", 8, "per-channel", 128), ("fp8-e5m2", 8, "per-channel", 128)])
def test_a_format_fixes_its_bits_and_blocks(fmt, bits, granularity, group):
    cfg = QuantConfig(format=fmt, bits=2, group_size=32)
    assert (cfg.bits, cfg.granularity, cfg.group_size) == (bits, granularity, group)
    assert cfg == QuantConfig(format=fmt)  # one setting, one key, whatever the ignored fields said


@pytest.mark.parametrize("kwargs, message", [
    (dict(format="nf4", method="gptq"), "GPTQ uses the integer grid"),
    (dict(format="q4_k", range_method="entropy"), "applies to the integer grid"),
    (dict(format="mxfp4", symmetric=False), "drop the asymmetric grid"),
    (dict(format="fp8-e4m3", granularity="group"), "per-channel or per-tensor"),
    (dict(double_quant=True), "applies to format nf4"),
    (dict(format="fp4"), "format 'fp4' is not supported"),
    (dict(rotate="random"), "rotation 'random' is not supported"),
    (dict(method="fp16", format="nf4"), "plain cast"),
    (dict(range_method="kl"), "range method 'kl' is not supported"),
])
def test_bad_format_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as error:
        QuantConfig(**kwargs)
    assert "\n" not in str(error.value)


def test_rotation_and_pruning_do_not_mix():
    with pytest.raises(ConfigError, match="prune or rotate"):
        RunConfig(ModelSpec("tiny-llama"), prune=PruneConfig(ratio=0.5), quant=QuantConfig(rotate="hadamard"))


@pytest.mark.parametrize("cfg, label", [
    (QuantConfig(format="nf4"), "NF4 b64"), (QuantConfig(format="nf4", double_quant=True), "NF4 b64 dq"),
    (QuantConfig(format="fp8-e4m3", granularity="per-tensor"), "FP8-E4M3 per-tensor"),
    (QuantConfig(format="mxfp4"), "MXFP4 b32"), (QuantConfig(format="q4_k", rotate="hadamard"), "Q4_K rot"),
    (QuantConfig(bits=3, range_method="percentile"), "W3A16 per-channel sym p99.9"),
    (QuantConfig(bits=4, granularity="group", group_size=64, rotate="hadamard"), "W4A16 g64 sym rot"),
    (QuantConfig(bits=4, range_method="entropy", method="gptq"), "GPTQ W4A16 per-channel sym KL")])
def test_labels_name_the_format(cfg, label):
    assert cfg.label == label


def test_store_keys_of_the_integer_grid_do_not_change():
    cfg = QuantConfig(bits=4, granularity="group", group_size=64)
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("format", "double_quant", "rotate")}
    assert setting_identity(None, cfg) == {"prune": None, "quant": before}  # the key as stored before formats
    assert setting_identity(None, QuantConfig(bits=4, rotate="hadamard"))["quant"]["rotate"] == "hadamard"
    keys = {str(setting_identity(None, QuantConfig(format=f))) for f in ("nf4", "mxfp4", "nvfp4", "q4_k")}
    assert len(keys) == 4


def test_run_config_round_trips_formats():
    config = RunConfig(ModelSpec("tiny-llama"), quant=QuantConfig(format="nf4", double_quant=True))
    assert RunConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    old["quant"] = {k: v for k, v in old["quant"].items() if k not in ("format", "double_quant", "rotate")}
    assert RunConfig.from_dict(old).quant.format == "int"  # results stored before formats still load
