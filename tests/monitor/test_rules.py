"""One parametrised test over every weakness rule (river's drift-detector tests are the model).

Each rule runs inside a real :class:`RuntimeDetector` fed real samples: it fires on figures
past its threshold, stays quiet on figures within it, and its triggers obey the cooldown. A rule
added to :data:`vortex.monitor.rules.RULES` without a scenario here fails
``test_every_rule_has_a_scenario``.
"""

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import pytest

from vortex import RuntimeDetector, RuntimeDetectorConfig
from vortex.monitor import WeaknessType
from vortex.monitor.rules import RULES, kinds_for, rule_for, watched_metric
from vortex.rsi.engine import WATCHED_METRIC
from vortex.rsi.proposers import default_proposers

STEP = 100.0  # seconds of the detector's clock between two firings
COOLDOWN = 1.5 * STEP  # so a firing one step after a trigger is held back, two steps after is not


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Memory:
    def __init__(self) -> None:
        self.fraction = 0.1

    def __call__(self) -> float:
        return self.fraction


def feed(det, n, latency=100.0, confidence=0.9, error=math.nan):
    for _ in range(n):
        det.record_sample(latency, confidence, error)


def spike(det, clock):
    """A latency spike at the clock's time that clears a second later: one onset."""
    feed(det, 10, latency=900.0)
    found = det.analyze()
    clock.t += 1
    feed(det, 10, latency=100.0)
    det.analyze()
    clock.t -= 1
    return found


@dataclass
class Scenario:
    config: dict
    setup: Callable  # (det, clock, memory, bad)
    fire: Callable  # (det, clock, memory, bad) -> weaknesses of the pass


def _window(**sample):
    """A scenario over the metric window: 40 ordinary samples, then 10 per firing, ``sample``
    (the bad figures) when bad, ordinary ones when quiet."""
    return (lambda det, clock, memory, bad: feed(det, 40),
            lambda det, clock, memory, bad: (feed(det, 10, **(sample if bad else {})), det.analyze())[1])


def _memory_fire(det, clock, memory, bad):
    memory.fraction = 0.95 if bad else 0.5
    feed(det, 10)
    return det.analyze()


def _throughput_setup(det, clock, memory, bad):
    det.tick()
    for _ in range(5):
        feed(det, 100)
        clock.t += 1
        det.tick()


def _throughput_fire(det, clock, memory, bad):
    feed(det, 1 if bad else int(100 * (STEP + 1)))  # quiet: the usual 100 requests a second
    return det.tick()


def _pattern_setup(det, clock, memory, bad):
    """Two earlier onsets: one step apart (regular) when bad, 7 s apart (irregular) when quiet."""
    feed(det, 20)
    start = clock.t
    clock.t = start - 2 * STEP
    spike(det, clock)
    clock.t += STEP if bad else 7
    spike(det, clock)
    clock.t = start - STEP  # the first firing comes one step later, at ``start``


SCENARIOS = {
    WeaknessType.LATENCY_SPIKE: Scenario(
        dict(latency_spike_threshold_ms=300, latency_spike_count=3), *_window(latency=900.0)),
    WeaknessType.CONFIDENCE_DROP: Scenario(
        dict(confidence_drop_threshold=0.15, confidence_low_threshold=0.1),
        *_window(confidence=0.5)),
    WeaknessType.CONFIDENCE_LOW: Scenario(
        dict(confidence_low_threshold=0.6, confidence_drop_threshold=0.95), *_window(confidence=0.4)),
    WeaknessType.PREDICTION_ERROR_SPIKE: Scenario(
        dict(prediction_error_spike_threshold=0.5), *_window(error=0.9)),
    WeaknessType.MEMORY_PRESSURE: Scenario(
        dict(memory_pressure_threshold=0.85), lambda *a: feed(a[0], 40), _memory_fire),
    WeaknessType.THROUGHPUT_DROP: Scenario(
        dict(throughput_drop_threshold=0.3), _throughput_setup, _throughput_fire),
    WeaknessType.RECURRING_PATTERN: Scenario(
        dict(pattern_min_occurrences=3, pattern_period_secs=10 * STEP,
             pattern_confidence_threshold=0.7, latency_spike_threshold_ms=300),
        _pattern_setup, lambda det, clock, memory, bad: spike(det, clock)),
}


def run(kind, bad, firings=1):
    """The detector and the weaknesses of each firing of ``kind``'s scenario."""
    scenario = SCENARIOS[kind]
    clock, memory = Clock(), Memory()
    clock.t = 10 * STEP
    det = RuntimeDetector(RuntimeDetectorConfig(trigger_cooldown_secs=COOLDOWN, **scenario.config),
                          memory_probe=memory, clock=clock)
    scenario.setup(det, clock, memory, bad)
    passes = []
    for _ in range(firings):
        clock.t += STEP
        passes.append([w.type for w in scenario.fire(det, clock, memory, bad)])
    return det, passes


def test_every_rule_has_a_scenario():
    assert set(SCENARIOS) == {rule.kind for rule in RULES} == set(WeaknessType)


@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.value)
def test_rule_fires_past_its_threshold(kind):
    _, (found,) = run(kind, bad=True)
    assert kind in found


@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.value)
def test_rule_is_quiet_within_its_threshold(kind):
    _, (found,) = run(kind, bad=False)
    assert kind not in found


@pytest.mark.parametrize("kind", list(SCENARIOS), ids=lambda k: k.value)
def test_rule_triggers_obey_the_cooldown(kind):
    """Three firings one step apart: the first triggers, the second (inside the cooldown) is
    found but held back, the third (past it) triggers again."""
    det, passes = run(kind, bad=True, firings=1)
    assert kind in passes[0]
    first = det.stats().triggers_emitted
    events = []
    det.subscribe(events.append)
    scenario = SCENARIOS[kind]
    for expect in (0, 1):
        det._clock.t += STEP  # the detector's own clock (the Clock passed in)
        found = [w.type for w in scenario.fire(det, det._clock, det._memory_probe, True)]
        assert kind in found
        assert len(events) == expect
    assert det.stats().triggers_emitted == first + 1
    assert kind in {w.type for w in events[0].weaknesses}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.kind.value)
def test_rule_declares_what_its_fixes_are_watched_on_and_who_proposes(rule):
    assert watched_metric(rule.kind) == WATCHED_METRIC[rule.kind.value] == (
        rule.watched_metric, rule.lower_is_better)
    assert rule.watched_metric in ("latency_ms", "confidence", "error")
    assert rule_for(rule.kind.value) is rule
    no_command = SimpleNamespace(command_proposer=None)  # the built-in proposers only
    assert [p.name for p in default_proposers(no_command) if rule.kind in p.kinds] == [rule.proposer]
    assert rule.kind in kinds_for(rule.proposer)
