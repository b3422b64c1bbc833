import dataclasses
import math
import re

import pytest

from vortex.config import (
    BackgroundTrainingConfig,
    FluxConfig,
    RSIConfig,
    RuntimeDetectorConfig,
    as_dict,
)
from vortex.errors import ConfigError, ConfigKeyError


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
    assert r.enabled is False
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
        (RSIConfig, "watch_regression_threshold", -0.5),
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
        RSIConfig(watch_regression_threshold=-0.1)


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


@pytest.mark.parametrize("cls", [RuntimeDetectorConfig, FluxConfig, BackgroundTrainingConfig, RSIConfig])
def test_an_unknown_keyword_names_the_nearest_field_and_is_still_a_type_error(cls):
    first = dataclasses.fields(cls)[0].name
    typo = first[:-2] + first[-1] + first[-2]  # two letters swapped
    with pytest.raises(ConfigKeyError, match=rf"{cls.__name__} has no field '{typo}'; did you mean '{first}'"):
        cls(**{typo: 1})
    with pytest.raises(TypeError):  # what Python raised before: callers catching it still do
        cls(**{typo: 1})
    with pytest.raises(ConfigError):
        cls.from_dict({typo: 1})


def test_detector_config_typo_from_the_issue():
    with pytest.raises(ConfigKeyError, match="'windw_size'; did you mean 'window_size'"):
        RuntimeDetectorConfig(windw_size=5)


def test_from_dict_builds_nested_configs_and_tuples_from_parsed_json():
    import json

    c = BackgroundTrainingConfig.from_dict(json.loads(
        '{"batch_size": 8, "flux": {"gamma": 0.5, "holdout_positions": [3, 9]}}'))
    assert c.batch_size == 8 and c.flux == FluxConfig(gamma=0.5, holdout_positions=(3, 9))
    assert BackgroundTrainingConfig.from_dict(as_dict(c)) == c
    with pytest.raises(ConfigKeyError, match="FluxConfig has no field 'gama'; did you mean 'gamma'"):
        BackgroundTrainingConfig.from_dict({"flux": {"gama": 0.5}})


def test_the_absolute_watch_threshold_is_renamed_and_the_old_name_still_works_with_a_warning():
    """RSIConfig.watch_regression_threshold is relative (a fraction of the baseline); the
    training watch's was absolute under the same name: it is now watch_regression_margin."""
    with pytest.warns(DeprecationWarning, match="watch_regression_threshold is deprecated: it is now "
                                                "'watch_regression_margin'"):
        c = BackgroundTrainingConfig(watch_regression_threshold=0.2)
    assert c.watch_regression_margin == 0.2
    with pytest.warns(DeprecationWarning, match="read 'watch_regression_margin'"):
        assert c.watch_regression_threshold == 0.2
    with pytest.raises(ConfigKeyError, match="give only 'watch_regression_margin'"):
        BackgroundTrainingConfig(watch_regression_threshold=0.2, watch_regression_margin=0.1)
    with pytest.raises(ConfigError, match="watch_regression_margin=-0.1"):
        BackgroundTrainingConfig(watch_regression_margin=-0.1)
    assert RSIConfig(watch_regression_threshold=0.2).watch_regression_threshold == 0.2  # relative: kept


@pytest.mark.parametrize(("cls", "field"), [(BackgroundTrainingConfig, "num_epochs"),
                                            (BackgroundTrainingConfig, "seed"),
                                            (RSIConfig, "watch_requests")])
def test_integers_must_fit_in_64_bits(cls, field):
    with pytest.raises(ConfigError, match=f"{field}={2 ** 63}: must be <= {2 ** 63 - 1}"):
        cls(**{field: 2 ** 63})


@pytest.mark.parametrize("value", [True, 10 ** 400, 1j, "0.5", None])
def test_a_float_field_refuses_bools_huge_ints_and_non_numbers(value):
    with pytest.raises(ConfigError, match=re.escape(f"RSIConfig.watch_regression_threshold={value!r}")):
        RSIConfig(watch_regression_threshold=value)


@pytest.mark.parametrize(("old", "instead"), [("min_confidence_threshold", "confidence_low_threshold"),
                                              ("max_thorough_time_ms", "latency_spike_threshold_ms"),
                                              ("max_error_rate", "prediction_error_spike_threshold")])
def test_the_engines_former_thresholds_are_refused_with_the_detectors_name(old, instead):
    """One detector, one set of thresholds: a setting that no longer acts is refused, not ignored."""
    with pytest.raises(ConfigKeyError, match=re.escape(f"RSIConfig.{old} no longer exists") + ".*"
                       + re.escape(f"RuntimeDetectorConfig.{instead}")):
        RSIConfig(**{old: 0.5})
