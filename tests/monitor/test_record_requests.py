"""``record_requests``: a batch of requests recorded in one call equals the same requests
recorded one by one (ids, window contents, every statistic), and its ids stay contiguous
whatever other threads record at the same time."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from vortex import RuntimeDetector, RuntimeDetectorConfig
from vortex.monitor.tracker import PerformanceTracker

STAT_FIELDS = ("total_recorded", "size", "capacity", "recent_count", "baseline_count",
               "recent_latency_mean", "recent_latency_max", "recent_over_threshold",
               "recent_over_latency_mean", "recent_confidence_mean", "recent_error_count",
               "recent_error_mean", "baseline_latency_mean", "baseline_confidence_mean",
               "baseline_error_count", "baseline_error_mean", "all_latency_sum",
               "all_confidence_sum")


def _detector(window: int) -> RuntimeDetector:
    return RuntimeDetector(RuntimeDetectorConfig(window_size=window), memory_probe=lambda: 0.1)


def _same(a: float, b: float) -> bool:
    """Counts exactly; means and sums up to rounding: a batch adds its column sum to the
    all-time sums, and a batch larger than the window leaves the ring rotated differently, so
    the analysis sums the same values in another order."""
    if isinstance(a, int):
        return a == b
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)


def _assert_same_state(batched: RuntimeDetector, single: RuntimeDetector) -> None:
    """Every field of the two windows but the timestamps (a batch has one for all)."""
    sa, sb = batched._stats(30.0), single._stats(30.0)
    for name in STAT_FIELDS:
        assert _same(getattr(sa, name), getattr(sb, name)), (name, getattr(sa, name), getattr(sb, name))
    wa, wb = batched._window.snapshot(), single._window.snapshot()
    for column in ("latency_ms", "confidence", "error"):
        np.testing.assert_array_equal(wa[column], wb[column], err_msg=column)


@pytest.mark.parametrize("window, sizes", [(60, [0, 1, 7, 30]), (60, [100, 3]), (1000, [250, 250, 1])])
def test_a_batch_equals_the_same_requests_recorded_one_by_one(window, sizes):
    rng = np.random.default_rng(window + sum(sizes))
    batched, single = _detector(window), _detector(window)
    single.record_request(5.0, 0.5)  # a request recorded singly before: ids carry on from it
    batched.record_request(5.0, 0.5)
    for n in sizes:
        lat, conf = rng.exponential(20.0, n), rng.random(n)
        first = batched.record_requests(lat, conf)
        ids = [single.record_request(a, b) for a, b in zip(lat.tolist(), conf.tolist(), strict=True)]
        assert isinstance(first, int)
        assert list(range(first, first + n)) == ids
        if n:  # ground truth arriving later for some of them, through the ids each got
            for i in rng.choice(n, size=max(1, n // 3), replace=False).tolist():
                err = float(rng.random())
                assert batched.record_error(first + i, err) == single.record_error(ids[i], err)
        _assert_same_state(batched, single)
    assert batched.total_samples == single.total_samples == 1 + sum(sizes)


def test_the_first_id_of_an_empty_batch_is_the_next_id():
    det = _detector(10)
    det.record_sample(1.0, 0.5)
    assert det.record_requests(np.empty(0), np.empty(0)) == 1
    assert det.record_request(1.0, 0.5) == 1


@pytest.mark.parametrize("lat, conf, named", [
    ([1.0, -2.0, 3.0], [0.5, 0.5, 0.5], "latencies_ms[1]=-2.0"),
    ([1.0, 2.0, 3.0], [0.5, 0.5, 1.5], "confidences[2]=1.5"),
    ([1.0, float("nan")], [0.5, 0.5], "latencies_ms[1]=nan"),
    ([1.0, 2.0], [0.5], "same length"),
])
def test_a_bad_value_refuses_the_whole_batch_and_names_it(lat, conf, named):
    det = _detector(60)
    det.record_request(1.0, 0.5)
    before = det._window.snapshot()
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        det.record_requests(np.array(lat), np.array(conf))
    assert det.total_samples == 1
    np.testing.assert_array_equal(det._window.snapshot()["latency_ms"], before["latency_ms"])
    assert det.record_request(1.0, 0.5) == 1


def test_lists_and_integer_arrays_are_refused():
    det = _detector(60)
    with pytest.raises(ValueError, match="NumPy array"):
        det.record_requests([1.0], [0.5])
    with pytest.raises(ValueError, match="floating dtype"):
        det.record_requests(np.ones(2, dtype=np.int64), np.ones(2))


def test_concurrent_batches_get_contiguous_ids_holding_their_own_values():
    """Four threads record batches at once (and one records singly): each batch's ids are
    contiguous and index exactly its own values in the window."""
    det = _detector(200_000)
    batches: list[tuple[int, np.ndarray]] = []
    lock = threading.Lock()

    def batcher(k: int) -> None:
        for b in range(200):
            lat = np.arange(50, dtype=np.float64) + (k * 1_000_000 + b * 1000)
            first = det.record_requests(lat, np.full(50, 0.5))
            with lock:
                batches.append((first, lat))

    def single() -> None:
        for _ in range(5000):
            det.record_request(7.5, 0.25)

    threads = [threading.Thread(target=batcher, args=(k,)) for k in range(1, 5)]
    threads.append(threading.Thread(target=single))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latency = det._window.snapshot()["latency_ms"]
    assert len(latency) == det.total_samples == 4 * 200 * 50 + 5000
    for first, lat in batches:
        np.testing.assert_array_equal(latency[first:first + 50], lat)
    taken = np.zeros(len(latency), dtype=bool)
    for first, _ in batches:
        assert not taken[first:first + 50].any()
        taken[first:first + 50] = True
    assert np.all(latency[~taken] == 7.5)


def test_the_tracker_records_a_batch_as_it_records_one_by_one():
    rng = np.random.default_rng(3)
    lat, conf = rng.exponential(20.0, 500), rng.random(500)
    batched, single = PerformanceTracker(latency_window=300), PerformanceTracker(latency_window=300)
    batched.record_batch("fleet", lat, conf)
    record = single.recorder("fleet")
    for a, b in zip(lat.tolist(), conf.tolist(), strict=True):
        record(a, b)
    _assert_same_summary(batched, single)
    with pytest.raises(ValueError, match=r"confidences\[0\]=2.0"):
        batched.record_batch("fleet", np.ones(1), np.full(1, 2.0))
    with pytest.raises(ValueError, match="mode"):
        batched.record_batch("", lat, conf)
    _assert_same_summary(batched, single)


def _assert_same_summary(batched: PerformanceTracker, single: PerformanceTracker) -> None:
    a, b = batched.summary(recent=50), single.summary(recent=50)
    assert a.pop("modes")["fleet"] == pytest.approx(b.pop("modes")["fleet"], rel=1e-12)
    assert a == b
