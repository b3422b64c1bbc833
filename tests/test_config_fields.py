"""Every field of every configuration dataclass refuses a wrong value with a ConfigError naming
the field (as the user spells it: ``RSIConfig.watch_requests``, ``[tool.vortex] sandbox.uid``)."""

from __future__ import annotations

import dataclasses

import pytest

from vortex.config import BackgroundTrainingConfig, FluxConfig, RSIConfig, RuntimeDetectorConfig
from vortex.errors import ConfigError
from vortex.rsi.settings import CommandProposerSettings, SandboxLimits, TunableSpec, VortexSettings
from vortex.training.worker import WorkerArgs


class _Wrong:
    """A value no field accepts: not a number, a string, a bool, a tuple or a mapping."""

    def __repr__(self) -> str:
        return "<wrong value>"


# each config class with the fewest valid arguments it needs, and how messages name its fields
_CONFIGS = [
    (RuntimeDetectorConfig, {}, "RuntimeDetectorConfig."),
    (FluxConfig, {}, "FluxConfig."),
    (BackgroundTrainingConfig, {}, "BackgroundTrainingConfig."),
    (RSIConfig, {}, "RSIConfig."),
    (SandboxLimits, {}, "[tool.vortex] sandbox."),
    (CommandProposerSettings, {"command": ("my-llm-tool", "--diff")}, "[tool.vortex] command_proposer."),
    (TunableSpec, {"name": "workers", "file": "conf.toml", "type": "int", "min": 1, "max": 8,
                   "addresses": {"latency_spike": "increase"}}, "[tool.vortex] tunables.workers."),
    (VortexSettings, {"root": "/srv/tree", "test_command": ("{python}", "-m", "pytest")},
     "[tool.vortex] "),
    (WorkerArgs, {"snapshot": "snap.arrow", "out": "out", "factory": "pkg.mod:make",
                  "factory_kwargs": {}}, "WorkerArgs."),
]
# fields a message names by the key the user writes, where that differs from the attribute
_KEYS = {(VortexSettings, "primary_metric"): "benchmark.primary",
         (VortexSettings, "weakness_metrics"): "benchmark.metrics",
         (TunableSpec, "name"): "[tool.vortex] tunables.name"}


@pytest.mark.parametrize(("cls", "valid", "field"), [
    pytest.param(cls, valid, f.name, id=f"{cls.__name__}.{f.name}")
    for cls, valid, _ in _CONFIGS for f in dataclasses.fields(cls)])
def test_every_field_refuses_a_wrong_value_naming_it(cls, valid, field):
    prefix = next(p for c, _, p in _CONFIGS if c is cls)
    cls(**valid)  # the base is valid: the error below comes from the one wrong field
    with pytest.raises(ConfigError) as info:
        cls(**{**valid, field: _Wrong()})
    key = _KEYS.get((cls, field))
    label = key if key and key.startswith("[") else prefix + (key or field)
    assert f"{label}=<wrong value>" in str(info.value)
