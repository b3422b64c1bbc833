import dataclasses
import math

import pytest

from vortex.config import (
    BackgroundTrainingConfig,
    FluxConfig,
    RSIConfig,
    RuntimeDetectorConfig,
    as_dict,
)
from vortex.errors import ConfigError


def test_defaults_match_design():
    c = RuntimeDetectorConfig()
    assert (c.monitor_interval_ms, c.window_size, c.latency_spike_threshold_ms) == (1000, 60, 500)
    assert (c.latency_spike_count, c.confidence_drop_threshold, c.confidence_low_threshold) == (3, 0.15, 0.6)
    assert (c.prediction_error_spike_threshold, c.memory_pressure_threshold) == (0.5, 0.85)
    assert (c.throughput_drop_threshold, c.auto_trigger_rsi, c.trigger_cooldown_secs) == (0.3, True, 300)
    t = BackgroundTrainingConfig()
    assert (t.training_interval_secs, t.min_samples_for_training, t.max_samples_per_batch) == (3600, 100, 10000)
    assert (t.num_epochs, t.learning_rate, t.batch_size, t.auto_swap_models) == (3, 1e-3, 32, True)
    assert (t.min_improvement_threshold, t.keep_last_n_versions, t.world_size) == (2.0, 5, 1)
    r = RSIConfig()
    assert (r.enabled, r.min_confidence_threshold, r.max_thorough_time_ms, r.max_error_rate) == (False, 0.7, 1000, 0.05)
    assert (r.max_weaknesses_per_cycle, r.auto_apply_low_risk, r.auto_apply_medium_risk) == (3, True, False)
    assert (r.min_inferences_before_rsi, r.cycle_interval_secs) == (100, 3600)
    assert FluxConfig().holdout_positions == (3, 6, 9)


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (RuntimeDetectorConfig, "window_size", 0),
        (RuntimeDetectorConfig, "window_size", 5),
        (RuntimeDetectorConfig, "window_size", 60.5),
        (RuntimeDetectorConfig, "latency_spike_threshold_ms", -1.0),
        (RuntimeDetectorConfig, "latency_spike_threshold_ms", math.nan),
        (RuntimeDetectorConfig, "confidence_low_threshold", 1.5),
        (RuntimeDetectorConfig, "memory_pressure_threshold", 0.0),
        (RuntimeDetectorConfig, "throughput_drop_threshold", 1.0),
        (RuntimeDetectorConfig, "latency_spike_count", 11),
        (RuntimeDetectorConfig, "enabled", "yes"),
        (RuntimeDetectorConfig, "trigger_cooldown_secs", -5),
        (FluxConfig, "half_life", 0.0),
        (FluxConfig, "gamma", 1.5),
        (FluxConfig, "holdout_positions", (3, 10)),
        (FluxConfig, "holdout_positions", (3, 3)),
        (FluxConfig, "holdout_positions", tuple(range(1, 10))),
        (BackgroundTrainingConfig, "learning_rate", 0.0),
        (BackgroundTrainingConfig, "batch_size", 0),
        (BackgroundTrainingConfig, "world_size", 0),
        (BackgroundTrainingConfig, "task", "ranking"),
        (BackgroundTrainingConfig, "min_samples_for_training", 20_000),
        (RSIConfig, "max_error_rate", 2.0),
        (RSIConfig, "max_weaknesses_per_cycle", 0),
        (RSIConfig, "benchmark_repeats", 1),
    ],
)
def test_impossible_values_raise_config_error_naming_the_field(cls, field, value):
    with pytest.raises(ConfigError) as info:
        cls(**{field: value})
    assert f"{cls.__name__}.{field}" in str(info.value)
    assert repr(value) in str(info.value)


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        RSIConfig(max_error_rate=-0.1)


def test_replace_validates_again():
    c = RuntimeDetectorConfig()
    assert dataclasses.replace(c, window_size=100).window_size == 100
    with pytest.raises(ConfigError):
        dataclasses.replace(c, window_size=-1)


def test_as_dict_nests_and_is_json_ready():
    import json

    d = as_dict(BackgroundTrainingConfig())
    assert d["flux"]["holdout_positions"] == [3, 6, 9]
    json.dumps(d)
