"""RecoveryConfig validates itself with one-line messages."""
import pytest

from memopt_core.errors import ConfigError
from memopt_core.recovery.config import RecoveryConfig


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps 0 is out of range; choose 1 to 100,000"),
    (dict(steps=-5), "steps -5 is out of range"),
    (dict(steps=2.5), "steps must be a whole number, got 2.5"),
    (dict(lr=0.0), "learning rate 0 is out of range; choose 1e-07 to 0.01"),
    (dict(lr=0.5), "learning rate 0.5 is out of range"),
    (dict(lr=float("nan")), "learning rate must be a number, got nan"),
    (dict(lr="fast"), "learning rate must be a number, got 'fast'"),
    (dict(tokens_per_step=300, seq_len=256), "tokens per step 300 must be a multiple of the window length 256"),
    (dict(tokens_per_step=128, seq_len=256), "tokens per step 128 is out of range"),
    (dict(layers="everything"), "layers 'everything' is not supported; choose 'compressed+norms' or 'compressed'"),
    (dict(train_text=" "), "training text must be"),
    (dict(eval_every=0), "evaluate every 0 is out of range"),
    (dict(max_seconds=0.0), "time limit (seconds) 0 is out of range"),
    (dict(only=("",)), "layer patterns must be non-empty strings"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError) as error:
        RecoveryConfig(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_round_trip_and_derived_values():
    config = RecoveryConfig(steps=40, tokens_per_step=1024, seq_len=256, only=["*.mlp.*"])
    assert config.windows_per_step == 4 and config.only == ("*.mlp.*",) and config.train_norms
    assert config.label == "+ recovery 40 steps"
    assert RecoveryConfig.from_dict(config.to_dict()) == config
