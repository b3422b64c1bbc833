"""Runtime detector benchmarks, each side by side with the peer a user would pick instead.

* per-call recording: ``RuntimeDetector.record_sample`` vs prometheus_client
  ``Histogram.observe`` vs river ``drift.ADWIN.update`` (plus the bare Python loop, so the
  loop's own share of each figure is visible); one round = a loop of CALLS calls.
* batch recording from NumPy vs a NumPy copy of the same bytes; one pump pass of requests
  fed in one ``record_requests`` call vs one ``record_request`` call per request.
* one analysis pass (the C++ statistics, and the whole ``RuntimeDetector.analyze``) vs the
  same statistics computed with NumPy.
* memory of a window_size=60 detector beyond its Python object.

Run: ``PYTHONPATH=$PWD/src pytest benchmarks/bench_monitor.py --benchmark-only``; the ratios are
printed at the end (benchmarks/conftest.py).
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from river import drift

from vortex import RuntimeDetector, RuntimeDetectorConfig
from vortex._core import MetricWindow
from vortex._fast_metrics import MetricRecorder

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import naive  # noqa: E402

CALLS = 10_000
VALUES = [float(v) for v in np.random.default_rng(0).exponential(20.0, CALLS)]


def _detector(window_size: int = 60) -> RuntimeDetector:
    return RuntimeDetector(RuntimeDetectorConfig(window_size=window_size),
                           memory_probe=lambda: 0.1)


# -- per-call recording -----------------------------------------------------------------------

@pytest.mark.benchmark(group="record one sample (per call)")
def test_record_sample_vortex(benchmark):
    det = _detector()
    record = det.record_sample

    def run():
        for v in VALUES:
            record(v, 0.9)

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)
    assert det.total_samples % CALLS == 0 and det.total_samples >= CALLS
    assert det.stats().recent_latency_ms == pytest.approx(sum(VALUES[-10:]) / 10)


@pytest.mark.benchmark(group="record one sample (per call)")
def test_record_sample_prometheus_histogram(benchmark):
    hist = Histogram("latency_ms", "request latency", registry=CollectorRegistry(),
                     buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000))
    observe = hist.observe

    def run():
        for v in VALUES:
            observe(v)

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)
    count = next(s.value for s in hist.collect()[0].samples if s.name.endswith("_count"))
    assert count % CALLS == 0 and count >= CALLS


@pytest.mark.benchmark(group="record one sample (per call)")
def test_record_sample_river_adwin(benchmark):
    adwin = drift.ADWIN()
    update = adwin.update

    def run():
        for v in VALUES:
            update(v)

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)
    assert adwin.n_detections >= 0 and adwin.width > 0


@pytest.mark.benchmark(group="record one sample (per call)")
def test_record_sample_bare_python_loop(benchmark):
    def run():
        for v in VALUES:
            pass

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)


# -- batch recording --------------------------------------------------------------------------

BATCH = [10_000, 1_000_000]


def _batch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    err = np.where(rng.random(n) < 0.5, rng.random(n), np.nan)
    return rng.exponential(20.0, n), rng.random(n), err


@pytest.mark.parametrize("n", BATCH)
def test_record_batch_vortex(benchmark, n):
    benchmark.group = f"record a batch of {n:,} samples"
    lat, conf, err = _batch(n)
    det = _detector(window_size=n)  # the window holds the whole batch: every sample is stored
    benchmark.extra_info["calls_per_round"] = n
    benchmark(det.record_batch, lat, conf, err)
    snap = det._window.snapshot()
    np.testing.assert_array_equal(snap["latency_ms"], lat)
    np.testing.assert_array_equal(snap["error"], err)


@pytest.mark.parametrize("n", BATCH)
def test_record_batch_numpy_copy(benchmark, n):
    benchmark.group = f"record a batch of {n:,} samples"
    src = _batch(n)
    dst = [np.empty_like(a) for a in src]

    def run():
        for d, s in zip(dst, src):
            np.copyto(d, s)

    benchmark.extra_info["calls_per_round"] = n
    benchmark(run)
    np.testing.assert_array_equal(dst[0], src[0])


# -- one control-plane pass: a fleet read fed to the detector --------------------------------

PASS = 200  # requests per 50 ms pump pass at 4,000 requests/s over the fleet


@pytest.mark.benchmark(group=f"feed {PASS} requests awaiting ground truth (one pump pass)")
def test_record_requests_batch_vortex(benchmark):
    """One call, the copy without the GIL: what the control plane holds the GIL for per pass."""
    lat, conf, _ = _batch(PASS)
    det = _detector(window_size=1000)
    first = benchmark(det.record_requests, lat, conf)
    assert det.total_samples - first == PASS


@pytest.mark.benchmark(group=f"feed {PASS} requests awaiting ground truth (one pump pass)")
def test_record_request_loop(benchmark):
    """The per-record loop the pump ran: one ``record_request`` per record (plus ``tolist``)."""
    lat, conf, _ = _batch(PASS)
    det = _detector(window_size=1000)
    record = det.record_request

    def run():
        return [record(a, b) for a, b in zip(lat.tolist(), conf.tolist(), strict=True)]

    ids = benchmark(run)
    assert ids[-1] - ids[0] == PASS - 1


# -- one analysis pass ------------------------------------------------------------------------

STAT_CHECKS = ["recent_latency_mean", "recent_confidence_mean", "baseline_latency_mean",
               "baseline_confidence_mean", "baseline_error_mean", "recent_over_threshold"]


class _Recorder(MetricRecorder):
    def __init__(self, window: MetricWindow) -> None:
        self._attach(window)


def _filled_window(size: int) -> tuple[_Recorder, tuple[np.ndarray, ...]]:
    """A recorder on a window of ``size`` samples (the analysis pass is bound on the recorder)."""
    lat, conf, err = _batch(size)
    w = MetricWindow(size)
    w.record_batch(lat, conf, err)
    return _Recorder(w), (lat, conf, err)


def _check(stats, expected) -> None:
    for name in STAT_CHECKS:
        a, b = getattr(stats, name), expected[name]
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9), name


@pytest.mark.parametrize("size", [60, 1_000_000])
def test_analysis_pass_vortex(benchmark, size):
    benchmark.group = f"analysis pass, window {size:,}"
    rec, arrays = _filled_window(size)
    stats = benchmark(rec._stats, 30.0)
    _check(stats, naive.window_stats(*arrays, 30.0))


@pytest.mark.parametrize("size", [60, 1_000_000])
def test_analysis_pass_numpy(benchmark, size):
    benchmark.group = f"analysis pass, window {size:,}"
    rec, arrays = _filled_window(size)
    expected = benchmark(naive.window_stats, *arrays, 30.0)
    _check(rec._stats(30.0), expected)


@pytest.mark.benchmark(group="analysis pass, window 60")
def test_analysis_pass_whole_detector(benchmark):
    """RuntimeDetector.analyze: C++ statistics + real memory reading + the seven checks."""
    det = RuntimeDetector()  # the real process memory probe
    lat, conf, _ = _batch(60)
    det.record_batch(lat, conf)
    found = benchmark(det.analyze)
    assert found == []  # a stable random stream: nothing to report


# -- memory -----------------------------------------------------------------------------------

@pytest.mark.benchmark(group="detector memory, window 60")
def test_memory_window_60_vortex(benchmark):
    """Bytes beyond the Python object: the C++ window (object + ring) as it reports itself,
    cross-checked with the malloc heap that 2,000 such windows really take; the Python-side
    objects of a detector (dicts, deques, queue, locks) are measured with tracemalloc."""
    det = benchmark(_detector)
    own = det.memory_bytes()
    heap = _heap_per_window(2000)
    benchmark.extra_info["memory_bytes"] = own
    if heap is not None:
        benchmark.extra_info["malloc_bytes_per_window"] = heap
        assert heap <= 16 * 1024
    benchmark.extra_info["python_object_bytes"] = _python_bytes(_detector)
    assert own <= 16 * 1024


def _heap_in_use() -> int | None:
    """glibc's count of heap bytes in use (None where mallinfo2 is unavailable)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def _heap_per_window(n: int) -> float | None:
    before = _heap_in_use()
    windows = [MetricWindow(60) for _ in range(n)]
    after = _heap_in_use()
    assert len(windows) == n
    return None if before is None else (after - before) / n


def _python_bytes(make) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        obj = make()
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del obj
    return size
