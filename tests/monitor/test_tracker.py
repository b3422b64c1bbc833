import math
import threading

import numpy as np
import pytest

from vortex import PerformanceTracker
from vortex.monitor.tracker import flux_position


def test_per_mode_figures_match_numpy():
    rng = np.random.default_rng(1)
    t = PerformanceTracker(latency_window=100)
    fast = rng.exponential(5.0, 250)
    slow = rng.exponential(80.0, 40)
    conf = rng.uniform(0.5, 1.0, 250)
    for lat, c in zip(fast, conf):
        t.record("fast", float(lat), float(c))
    for lat in slow:
        t.record("thorough", float(lat), 0.95)
    s = t.summary()
    f = s["modes"]["fast"]
    assert f["count"] == 250 and f["window"] == 100
    assert f["mean_latency_ms"] == pytest.approx(fast.mean())
    assert f["mean_confidence"] == pytest.approx(conf.mean())
    # percentiles are exact over the newest latency_window requests
    for q in (50, 95, 99):
        assert f[f"p{q}_latency_ms"] == pytest.approx(np.percentile(fast[-100:], q))
    th = s["modes"]["thorough"]
    assert th["count"] == 40 and th["p99_latency_ms"] == pytest.approx(np.percentile(slow, 99))
    assert s["total_inferences"] == t.total_inferences == 290


def test_positions_and_sacred_rate():
    t = PerformanceTracker()
    assert [flux_position(s) for s in range(10)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]
    for seq in range(90):
        t.record("fast", 1.0, 0.9, seq=seq)
        p = flux_position(seq)
        t.record_outcome(seq, correct=(p in (3, 6, 9)) or seq % 2 == 0)
    s = t.summary()
    assert t.sacred_success_rate() == s["sacred_success_rate"] == 1.0
    for p in (1, 2, 4, 5, 7, 8):
        pos = s["positions"][p]
        assert pos["inferences"] == pos["outcomes"] == 10 and pos["successes"] == 5
        assert pos["success_rate"] == 0.5
    assert s["success_rate"] == pytest.approx((30 + 30) / 90)
    assert s["total_outcomes"] == 90


def test_arrival_positions_count_each_inference_at_its_number():
    t = PerformanceTracker(arrival_positions=True)
    for k in range(1, 101):  # inference k is number k
        t.record("fast" if k % 2 else "slow", 1.0, 0.9)
        if k % 5 == 0:
            t.record_outcome(k, correct=True)
    s = t.summary()
    expected = [sum(1 for k in range(1, 101) if flux_position(k) == p) for p in range(1, 10)]
    assert [s["positions"][p]["inferences"] for p in range(1, 10)] == expected
    assert sum(s["positions"][p]["outcomes"] for p in range(1, 10)) == 20
    with pytest.raises(ValueError, match="arrival"):  # one numbering, not two
        t.record("fast", 1.0, 0.9, seq=7)
    with pytest.raises(ValueError, match="arrival_positions=1"):
        PerformanceTracker(arrival_positions=1)


def test_recent_figures_follow_a_change_that_all_time_means_hide():
    t = PerformanceTracker(latency_window=500)
    for k in range(2000):  # a long good past...
        t.record("fast", 10.0, 0.95)
        t.record_outcome(k, True)
    for k in range(100):  # ...then confidence and accuracy drop
        t.record("fast", 30.0, 0.40)
        t.record_outcome(k, k % 2 == 0)
    s = t.summary(recent=100)
    fast = s["modes"]["fast"]
    assert fast["mean_confidence"] == pytest.approx((2000 * 0.95 + 100 * 0.40) / 2100)  # lags
    assert fast["recent_mean_confidence"] == pytest.approx(0.40) and fast["recent_count"] == 100
    assert fast["recent_mean_latency_ms"] == pytest.approx(30.0)
    assert s["success_rate"] == pytest.approx(2050 / 2100)
    assert s["recent_success_rate"] == pytest.approx(0.5) and s["recent_outcomes"] == 100
    assert "recent_success_rate" not in t.summary()
    for bad in (0, 501, True, 2.0):
        with pytest.raises(ValueError, match="recent="):
            t.summary(recent=bad)


def test_empty_tracker():
    t = PerformanceTracker()
    s = t.summary()
    assert s["modes"] == {} and s["sacred_success_rate"] is None and s["success_rate"] is None
    assert s["positions"][3]["success_rate"] is None and t.total_inferences == 0


@pytest.mark.parametrize("call, match", [
    (lambda t: t.record("fast", -1.0, 0.5), r"latency_ms=-1\.0"),
    (lambda t: t.record("fast", 1.0, math.nan), "confidence=nan"),
    (lambda t: t.record("fast", 1.0, 0.5, seq=-1), "seq=-1"),
    (lambda t: t.record("", 1.0, 0.5), "mode=''"),
    (lambda t: t.record_outcome(1.5, True), r"seq=1\.5"),
    (lambda t: t.record("new-mode", math.inf, 0.5, seq=4), "latency_ms=inf"),
])
def test_bad_input_changes_nothing(call, match):
    t = PerformanceTracker()
    t.record("fast", 2.0, 0.5, seq=3)
    before = t.summary()
    with pytest.raises(ValueError, match=match):
        call(t)
    assert t.summary() == before


def test_mode_count_is_bounded():
    t = PerformanceTracker(max_modes=2)
    t.record("a", 1.0, 0.5)
    t.record("b", 1.0, 0.5)
    with pytest.raises(ValueError, match="mode='c'"):
        t.record("c", 1.0, 0.5)


def test_threads_exact_totals():
    t = PerformanceTracker(latency_window=1000)
    n = 20_000

    def work(i):
        mode = "fast" if i % 2 else "thorough"
        for k in range(n):
            t.record(mode, 1.0, 0.5, seq=k)
            if k % 10 == 0:
                t.record_outcome(k, True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    s = t.summary()
    assert s["modes"]["fast"]["count"] == s["modes"]["thorough"]["count"] == 3 * n
    assert sum(p["inferences"] for p in s["positions"].values()) == 6 * n
    assert s["total_outcomes"] == 6 * n // 10
