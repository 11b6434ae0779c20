"""Configs validate themselves: bad values raise ConfigError with a one-line message."""
import pytest

from memopt_core.config import CalibConfig, EvalConfig, ModelSpec, PruneConfig, QuantConfig, RunConfig, TargetConfig
from memopt_core.errors import ConfigError


@pytest.mark.parametrize("bits", [1, 7, 9, 0, -4])
def test_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match=f"bits {bits} is not supported"):
        QuantConfig(bits=bits)


@pytest.mark.parametrize("ratio", [1.5, -0.1, 0.96])
def test_prune_ratio_out_of_range(ratio):
    with pytest.raises(ConfigError, match="out of range"):
        PruneConfig(ratio=ratio)


@pytest.mark.parametrize("group", [0, -32])
def test_group_size_must_be_positive(group):
    with pytest.raises(ConfigError, match="group size"):
        QuantConfig(granularity="group", group_size=group)


def test_group_size_is_checked_even_when_bits_mean_none():
    with pytest.raises(ConfigError, match="group size"):
        QuantConfig.from_bits(16, granularity="group", group_size=0)


def test_from_bits_shorthands():
    assert QuantConfig.from_bits("16") is None
    assert QuantConfig.from_bits("bf16") == QuantConfig(method="bf16")
    assert QuantConfig.from_bits(4, granularity="group", group_size=64).label == "W4A16 g64 sym"
    with pytest.raises(ConfigError, match="not a number"):
        QuantConfig.from_bits("four")


def test_nm_pattern_implies_ratio_and_shorthand():
    assert PruneConfig.from_cli("2:4") == PruneConfig(method="magnitude", pattern="2:4")
    assert PruneConfig(pattern="4:8").ratio == 0.5
    with pytest.raises(ConfigError, match="magnitude, wanda or sparsegpt"):
        PruneConfig(method="l2-structured", pattern="2:4")


def test_float_zero_point_needs_asymmetric():
    with pytest.raises(ConfigError, match="asymmetric"):
        QuantConfig(zero_point="float")
    assert QuantConfig(symmetric=False, zero_point="float", granularity="group", group_size=32).label == \
        "W4A16 g32 asym-fmin"


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=4), "sequence length"), (dict(max_tokens=100, seq_len=512), "below the sequence length"),
    (dict(text=" "), "evaluation text"), (dict(gen_tokens=-1), "generation tokens")])
def test_eval_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(**kwargs)


def test_model_spec_validation():
    assert ModelSpec("tiny-llama").origin == "bundled"
    assert ModelSpec("HuggingFaceTB/SmolLM2-135M").origin == "hub"
    with pytest.raises(ConfigError, match="device"):
        ModelSpec("tiny-llama", device="tpu")
    with pytest.raises(ConfigError, match="neither a bundled model"):
        ModelSpec("not a valid id!")
    with pytest.raises(ConfigError, match="empty"):
        ModelSpec("  ")


def test_configs_are_frozen_and_round_trip():
    config = RunConfig(ModelSpec("tiny-llama"), PruneConfig(ratio=0.25), QuantConfig(bits=3),
                       TargetConfig(include=("lm_head",)), EvalConfig(max_tokens=1024), CalibConfig(samples=8))
    with pytest.raises(AttributeError):
        config.quant.bits = 8
    assert RunConfig.from_dict(config.to_dict()) == config
    assert not config.needs_calibration
    assert RunConfig(ModelSpec("tiny-llama"), PruneConfig(ratio=0.0)).prune is None


def test_error_messages_are_one_line():
    for make in (lambda: QuantConfig(bits=9), lambda: PruneConfig(method="random"),
                 lambda: QuantConfig(granularity="row")):
        with pytest.raises(ConfigError) as info:
            make()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, expected", [("300MB", 300 * 10**6), ("2GiB", 2 * 2**30), ("1.5GB", 1_500_000_000),
                                            (" 512MiB ", 512 * 2**20)])
def test_offload_sizes_read_as_accelerate_reads_them(text, expected):
    from memopt_core.config import OffloadConfig

    assert OffloadConfig.from_text(text).max_memory == expected


@pytest.mark.parametrize("text", ["300", "300mb", "0MB", "-1GB", "infGB", "nanGB", "lots", ""])
def test_offload_sizes_that_are_not_sizes_are_one_line_errors(text):
    from memopt_core.config import OffloadConfig

    with pytest.raises(ConfigError, match="is not a size; write it like 300MB"):
        OffloadConfig.from_text(text)
