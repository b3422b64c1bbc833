import dataclasses
import json
import logging
import math
import threading
import time

import numpy as np
import pytest

from vortex import RuntimeDetector, RuntimeDetectorConfig
from vortex.errors import ConfigError
from vortex.monitor import DetectorStats, RSITriggerEvent, WeaknessType

LOW_MEMORY = 0.1


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def make(memory=LOW_MEMORY, clock=None, **overrides):
    probe = memory if callable(memory) else (lambda: memory)
    return RuntimeDetector(RuntimeDetectorConfig(**overrides), memory_probe=probe,
                           clock=clock or FakeClock())


def types(weaknesses):
    return [w.type for w in weaknesses]


def feed(det, n, latency=100.0, confidence=0.9, error=math.nan):
    for _ in range(n):
        det.record_sample(latency, confidence, error)


# -- the scenarios of issue 2 ----------------------------------------------------------------

def test_latency_spike_scenario():
    det = make(latency_spike_threshold_ms=300, latency_spike_count=3)
    feed(det, 15, latency=200.0)
    feed(det, 5, latency=800.0)
    (w,) = det.analyze()
    assert w.type is WeaknessType.LATENCY_SPIKE
    assert w.metric_value == 500.0 and w.baseline_value == 300.0 and w.samples_analyzed == 20
    assert 0.0 < w.severity <= 1.0
    assert "5 of the last 10 requests took longer than 300 ms" in w.description


@pytest.mark.parametrize("count, found", [(5, [WeaknessType.LATENCY_SPIKE]), (6, [])])
def test_latency_spike_needs_the_configured_count(count, found):
    det = make(latency_spike_threshold_ms=300, latency_spike_count=count)
    feed(det, 15, latency=200.0)
    feed(det, 5, latency=800.0)
    feed(det, 1, latency=300.0)  # at the threshold is not over it
    assert types(det.analyze()) == found


def test_confidence_drop_scenario():
    det = make()
    feed(det, 15, confidence=0.85)
    feed(det, 10, confidence=0.65)
    (w,) = det.analyze()
    assert w.type is WeaknessType.CONFIDENCE_DROP
    assert w.baseline_value == pytest.approx(0.85) and w.metric_value == pytest.approx(0.65)
    assert w.severity == pytest.approx(0.2 / 0.85)


def test_stable_stream_raises_nothing():
    clock = FakeClock()
    det = make(clock=clock)
    rng = np.random.default_rng(0)
    for tick in range(10):
        for _ in range(50):
            det.record_sample(rng.normal(100, 5), rng.uniform(0.85, 0.95), rng.uniform(0, 0.1))
        clock.t += 1.0
        assert det.tick() == []
    assert det.stats().weaknesses_detected == {t.value: 0 for t in WeaknessType}
    assert det.events.empty()


def test_cooldown_holds_back_second_trigger_and_releases_it():
    clock = FakeClock()
    det = make(clock=clock, trigger_cooldown_secs=60)
    got = []
    det.subscribe(got.append)
    feed(det, 20, confidence=0.3)  # ConfidenceLow persists through every pass
    assert types(det.analyze()) == [WeaknessType.CONFIDENCE_LOW]
    assert len(got) == 1 and det.events.qsize() == 1
    clock.t += 30
    assert types(det.analyze()) == [WeaknessType.CONFIDENCE_LOW]  # found, but held back
    assert len(got) == 1 and det.stats().triggers_emitted == 1
    clock.t += 30
    det.analyze()
    assert len(got) == 2 and det.events.qsize() == 2
    event = det.events.get_nowait()
    assert isinstance(event, RSITriggerEvent) and event.reason == "confidence_low"
    assert det.stats().last_trigger_at == got[1].triggered_at


def test_no_trigger_without_auto_trigger():
    det = make(auto_trigger_rsi=False)
    feed(det, 20, confidence=0.3)
    assert types(det.analyze()) == [WeaknessType.CONFIDENCE_LOW]
    assert det.events.empty() and det.stats().triggers_emitted == 0


# -- one test per weakness type --------------------------------------------------------------

def test_confidence_low():
    det = make(confidence_low_threshold=0.6)
    feed(det, 20, confidence=0.45)
    (w,) = det.analyze()
    assert w.type is WeaknessType.CONFIDENCE_LOW
    assert w.metric_value == pytest.approx(0.45) and w.severity == pytest.approx(0.25)


def test_prediction_error_spike_uses_only_samples_with_ground_truth():
    det = make(prediction_error_spike_threshold=0.5)
    feed(det, 20, error=0.1)
    for _ in range(10):  # a label for every third request only: the gaps must not dilute
        feed(det, 2)
        feed(det, 1, error=0.9)
    (w,) = det.analyze()
    assert w.type is WeaknessType.PREDICTION_ERROR_SPIKE
    assert w.metric_value == pytest.approx(0.9) and w.severity == pytest.approx(1 - 0.5 / 0.9)
    assert "10 most recent requests with ground truth" in w.description
    det2 = make(prediction_error_spike_threshold=0.5)
    feed(det2, 20, error=0.1)
    feed(det2, 10)  # no labels lately: the newest labelled samples are still fine
    assert det2.analyze() == []
    det3 = make(prediction_error_spike_threshold=0.5)
    feed(det3, 30)  # no ground truth at all: nothing to judge
    assert det3.analyze() == []


def test_memory_pressure():
    readings = iter([0.95, 0.5])
    det = make(memory=lambda: next(readings), memory_pressure_threshold=0.85)
    (w,) = det.analyze()
    assert w.type is WeaknessType.MEMORY_PRESSURE
    assert w.metric_value == 0.95 and w.severity == pytest.approx(0.1 / 0.15)
    assert det.analyze() == []


def test_throughput_drop_from_real_rates():
    clock = FakeClock()
    det = make(clock=clock, throughput_drop_threshold=0.3)
    det.tick()
    for _ in range(5):
        feed(det, 100)
        clock.t += 1.0
        assert det.tick() == []
    assert det.throughput_rps() == pytest.approx(100.0)
    feed(det, 20)
    clock.t += 1.0
    (w,) = det.tick()
    assert w.type is WeaknessType.THROUGHPUT_DROP
    assert w.metric_value == pytest.approx(20.0) and w.baseline_value == pytest.approx(100.0)
    assert w.severity == pytest.approx(0.8)


def test_throughput_within_threshold_is_fine():
    clock = FakeClock()
    det = make(clock=clock, throughput_drop_threshold=0.3)
    det.tick()
    for n in (100, 100, 100, 100, 75):  # 25% lower: below the 30% threshold
        feed(det, n)
        clock.t += 2.0
        assert det.tick() == []
    assert det.throughput_rps() == pytest.approx(37.5)


def spike_episode(det, clock, at):
    """A latency spike that starts at time ``at`` and clears one second later."""
    clock.t = at
    feed(det, 10, latency=900.0)
    found = det.analyze()
    clock.t = at + 1
    feed(det, 10, latency=100.0)
    assert det.analyze() == []
    return found


def test_recurring_pattern_of_regular_onsets():
    clock = FakeClock(0.0)
    det = make(clock=clock, pattern_min_occurrences=3, pattern_period_secs=1000,
               pattern_confidence_threshold=0.7, trigger_cooldown_secs=0)
    feed(det, 20)
    assert types(spike_episode(det, clock, 100)) == [WeaknessType.LATENCY_SPIKE]
    assert types(spike_episode(det, clock, 200)) == [WeaknessType.LATENCY_SPIKE]
    third = spike_episode(det, clock, 300)
    assert types(third) == [WeaknessType.LATENCY_SPIKE, WeaknessType.RECURRING_PATTERN]
    pattern = third[1]
    assert pattern.metric_value == 3 and pattern.baseline_value == pytest.approx(100.0)
    assert pattern.severity == pytest.approx(1.0)
    assert "latency_spike began 3 times" in pattern.description


def test_irregular_or_disabled_patterns_are_not_reported():
    clock = FakeClock(0.0)
    det = make(clock=clock, pattern_min_occurrences=3, pattern_confidence_threshold=0.7)
    feed(det, 20)
    for at in (100, 110, 400):  # intervals 10 s and 290 s: regularity 1 - 0.93 = 0.07
        assert types(spike_episode(det, clock, at)) == [WeaknessType.LATENCY_SPIKE]
    clock = FakeClock(0.0)
    det = make(clock=clock, pattern_min_occurrences=3, enable_pattern_recognition=False)
    feed(det, 20)
    for at in (100, 200, 300):
        assert types(spike_episode(det, clock, at)) == [WeaknessType.LATENCY_SPIKE]


def test_persisting_weakness_counts_as_one_occurrence():
    clock = FakeClock(0.0)
    det = make(clock=clock, pattern_min_occurrences=2)
    feed(det, 20, confidence=0.3)
    for k in range(5):
        clock.t = 10.0 * k
        assert types(det.analyze()) == [WeaknessType.CONFIDENCE_LOW]


def test_disabled_detector_reports_nothing():
    det = make(memory=0.99, enabled=False)
    feed(det, 20, latency=5000.0, confidence=0.1, error=9.0)
    assert det.analyze() == [] and det.get_recent_weaknesses() == []
    assert det.total_samples == 20  # still records


def test_too_few_samples_for_sample_weaknesses():
    det = make()
    feed(det, 9, latency=5000.0, confidence=0.1)
    assert det.analyze() == []
    feed(det, 1, latency=5000.0, confidence=0.1)
    assert types(det.analyze()) == [WeaknessType.LATENCY_SPIKE, WeaknessType.CONFIDENCE_LOW]


# -- input validation ------------------------------------------------------------------------

@pytest.mark.parametrize("args, match", [
    ((-5.0, 0.5), r"latency_ms=-5\.0"), ((math.nan, 0.5), "latency_ms=nan"),
    ((math.inf, 0.5), "latency_ms=inf"), ((1.0, 1.2), r"confidence=1\.2"),
    ((1.0, -0.2), r"confidence=-0\.2"), ((1.0, 0.5, math.inf), "prediction_error=inf"),
    ((1.0, 0.5, -1.0), r"prediction_error=-1\.0"),
])
def test_bad_sample_raises_and_window_unchanged(args, match):
    det = make()
    feed(det, 3)
    before = det.stats()
    with pytest.raises(ValueError, match=match):
        det.record_sample(*args)
    after = det.stats()
    assert after.total_samples == before.total_samples == 3 == len(det)


def test_bad_batch_raises_and_window_unchanged():
    det = make()
    det.record_batch(np.full(5, 10.0), np.full(5, 0.9))
    with pytest.raises(ValueError, match=r"confidences\[2\]=2\.0"):
        det.record_batch(np.ones(3), np.array([0.5, 0.5, 2.0]))
    with pytest.raises(ValueError, match="same length"):
        det.record_batch(np.ones(3), np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="floating dtype"):
        det.record_batch(np.ones(3, dtype=np.int32), np.ones(3))
    assert det.total_samples == 5 and det.stats().recent_latency_ms == 10.0


def test_batch_feeds_the_analysis():
    det = make(latency_spike_threshold_ms=300)
    det.record_batch(np.r_[np.full(15, 200.0), np.full(5, 800.0)], np.full(20, 0.9),
                     np.full(20, np.nan))
    assert types(det.analyze()) == [WeaknessType.LATENCY_SPIKE]


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError, match="window_size"):
        RuntimeDetectorConfig(window_size=0)
    with pytest.raises(ConfigError, match="config="):
        RuntimeDetector({"window_size": 60})
    det = make()
    with pytest.raises(ConfigError):
        det.update_config("nope")


# -- threads, monitor thread, subscribers ----------------------------------------------------

def test_eight_threads_record_exact_counts():
    det = make(window_size=1000)
    n = 200_000
    errors = []

    def work(i):
        try:
            rec = det.record_sample
            for k in range(n):
                rec(float(k % 50), 0.5)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    st = det.stats()
    assert st.total_samples == 8 * n and st.samples_in_window == 1000
    assert det._stats(0.0).all_latency_sum == 8 * (n // 50) * sum(range(50))


def test_monitor_thread_runs_and_stops():
    det = RuntimeDetector(RuntimeDetectorConfig(monitor_interval_ms=5, trigger_cooldown_secs=0),
                          memory_probe=lambda: LOW_MEMORY)
    seen = threading.Event()
    det.subscribe(lambda e: seen.set())
    assert not det.is_running
    det.start()
    det.start()  # idempotent
    try:
        assert det.is_running
        feed(det, 20, confidence=0.2)
        assert seen.wait(10)
    finally:
        det.stop()
    assert not det.is_running and det.stats().analyses >= 1
    analyses = det.stats().analyses
    time.sleep(0.05)
    assert det.stats().analyses == analyses  # really stopped
    with det:  # context manager restarts it
        assert det.is_running
    assert not det.is_running


def test_raising_subscriber_is_logged_and_monitor_keeps_running(caplog):
    det = RuntimeDetector(RuntimeDetectorConfig(monitor_interval_ms=5, trigger_cooldown_secs=0),
                          memory_probe=lambda: LOW_MEMORY)
    calls = []
    enough = threading.Event()

    def bad(event):
        raise RuntimeError("subscriber bug")

    def good(event):
        calls.append(event)
        if len(calls) >= 3:
            enough.set()

    det.subscribe(bad)
    det.subscribe(good)
    feed(det, 20, confidence=0.2)
    with caplog.at_level(logging.ERROR, logger="vortex.monitor.detector"):
        det.start()
        try:
            assert enough.wait(10)
            assert det.is_running
        finally:
            det.stop()
    assert any("subscriber bug" in r.exc_text for r in caplog.records if r.exc_text)


def test_unsubscribe():
    det = make(trigger_cooldown_secs=0)
    got = []
    unsubscribe = det.subscribe(got.append)
    feed(det, 20, confidence=0.2)
    det.analyze()
    unsubscribe()
    unsubscribe()  # idempotent
    det.analyze()
    assert len(got) == 1 and det.events.qsize() == 2
    with pytest.raises(TypeError):
        det.subscribe(42)


def test_update_config_resizes_and_rethresholds():
    det = make(window_size=60, latency_spike_threshold_ms=300)
    for i in range(50):
        det.record_sample(float(i), 0.9)
    feed(det, 5, latency=800.0)
    assert types(det.analyze()) == [WeaknessType.LATENCY_SPIKE]
    det.update_config(dataclasses.replace(det.config, window_size=20,
                                          latency_spike_threshold_ms=1000))
    assert det.config.window_size == 20 and len(det) == 20
    snap = det._window.snapshot()["latency_ms"].tolist()
    assert snap == [float(i) for i in range(35, 50)] + [800.0] * 5
    assert det.analyze() == []
    assert det.stats().window_size == 20 and det.total_samples == 55


# -- reporting -------------------------------------------------------------------------------

def test_history_bounded_and_recent_weaknesses_in_order():
    clock = FakeClock()
    det = make(clock=clock, auto_trigger_rsi=False)
    feed(det, 20, confidence=0.3)
    for _ in range(1100):
        det.analyze()
    assert len(det.get_recent_weaknesses(5000)) == 1000
    assert det.stats().weaknesses_detected["confidence_low"] == 1100
    feed(det, 20, latency=900.0, confidence=0.3)
    last = det.analyze()
    assert det.get_recent_weaknesses(2) == last
    assert types(last) == [WeaknessType.LATENCY_SPIKE, WeaknessType.CONFIDENCE_LOW]
    assert det.get_recent_weaknesses(0) == []


def test_stats_figures_and_json():
    clock = FakeClock()
    det = make(clock=clock, memory=0.25)
    feed(det, 30, latency=10.0, confidence=0.8, error=0.2)
    feed(det, 10, latency=30.0, confidence=0.9)
    det.tick()
    clock.t += 2
    feed(det, 10)
    det.tick()
    s = det.stats()
    assert isinstance(s, DetectorStats)
    assert (s.total_samples, s.window_size, s.samples_in_window) == (50, 60, 50)
    assert s.window_fill == pytest.approx(50 / 60)
    assert s.recent_latency_ms == 100.0 and s.baseline_latency_ms == 10.0
    assert s.recent_confidence == pytest.approx(0.9) and s.baseline_confidence == pytest.approx(0.8)
    assert s.recent_prediction_error == pytest.approx(0.2) and s.memory_fraction == 0.25
    assert s.throughput_rps == pytest.approx(5.0) and s.analyses == 2
    assert json.loads(json.dumps(s.to_dict()))["total_samples"] == 50


def test_real_memory_and_throughput_readings():
    det = RuntimeDetector()
    assert 0.0 < det.memory_fraction() < 1.0
    feed(det, 1000)
    time.sleep(0.01)
    assert det.throughput_rps() > 0.0
    assert det.memory_bytes() <= 16 * 1024


# -------------------------------------------------------------- delayed ground truth
def test_record_request_returns_consecutive_ids_and_record_error_attaches_late_errors():
    det = make(window_size=60)
    ids = [det.record_request(50.0, 0.9) for _ in range(30)]
    assert ids == list(range(30))
    assert det.analyze() == []
    for i in ids[-12:]:
        assert det.record_error(i, 0.9) is True
    found = det.analyze()
    assert WeaknessType.PREDICTION_ERROR_SPIKE in types(found)
    spike = next(w for w in found if w.type is WeaknessType.PREDICTION_ERROR_SPIKE)
    assert spike.metric_value == pytest.approx(0.9)


def test_record_error_for_a_sample_that_left_the_window_is_reported_not_stored():
    det = make(window_size=20)
    first = det.record_request(50.0, 0.9)
    feed(det, 20)
    assert det.record_error(first, 0.9) is False
    assert det.record_error(10_000, 0.9) is False  # never recorded
    assert np.isnan(det._window.snapshot()["error"]).all()


@pytest.mark.parametrize("bad", [math.nan, -0.1, math.inf])
def test_record_error_rejects_bad_values_and_changes_nothing(bad):
    det = make()
    sid = det.record_request(50.0, 0.9)
    with pytest.raises(ValueError, match="prediction_error"):
        det.record_error(sid, bad)
    assert math.isnan(det._window.snapshot()["error"][0])


def test_raw_window_set_error_matches_the_slot_after_wraparound():
    from vortex._core import MetricWindow
    from vortex._fast_metrics import MetricRecorder

    class Recorder(MetricRecorder):
        def __init__(self, window):
            self._attach(window)

    rec = Recorder(MetricWindow(16))  # record and set_error are bound once, on the recorder
    ids = [rec.record_request(float(i), 0.5) for i in range(40)]
    assert ids == list(range(40))
    assert rec.record_error(30, 0.25) and rec.record_error(39, 0.75)
    assert not rec.record_error(23, 0.1)
    snap = rec._window.snapshot()
    assert snap["latency_ms"][30 - 24] == 30.0 and snap["error"][30 - 24] == 0.25
    assert snap["error"][-1] == 0.75
    assert np.isnan(snap["error"]).sum() == 14
