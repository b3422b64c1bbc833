"""Raw tests of the compiled bindings: vortex._core (MetricWindow, SampleRing) and the Cython
fast paths (MetricRecorder, SampleRingWriter)."""

import math
import threading

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vortex import _core, _fast_ring
from vortex._core import MetricWindow
from vortex._fast_metrics import MetricRecorder

STAT_FIELDS = ["recent_count", "recent_latency_mean", "recent_latency_max",
               "recent_over_threshold", "recent_over_latency_mean", "recent_confidence_mean",
               "recent_error_count", "recent_error_mean", "baseline_count",
               "baseline_latency_mean", "baseline_confidence_mean", "baseline_error_count",
               "baseline_error_mean"]


class Recorder(MetricRecorder):
    def __init__(self, window):
        self._attach(window)


def record(w, *sample):
    """One sample through the per-request path (the only binding of MetricWindow::record)."""
    Recorder(w).record_sample(*sample)


def analyze(w, threshold):
    """One analysis pass (the only binding of MetricWindow::analyze)."""
    return Recorder(w)._stats(threshold)


def contents(w):
    s = w.snapshot()
    return s["latency_ms"], s["confidence"], s["error"]


def assert_matches_naive(w, threshold):
    """The analysis pass (Cython Stats over the C++ window) vs NumPy."""
    lat, conf, err = contents(w)
    expected = naive.window_stats(lat, conf, err, threshold)
    got = analyze(w, threshold)
    assert got.size == expected["size"] == len(w)
    for name in STAT_FIELDS:
        a, b = getattr(got, name), expected[name]
        if isinstance(b, float) and math.isnan(b):
            assert math.isnan(a), name
        else:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-9), name


def test_record_and_wraparound_keep_newest():
    w = MetricWindow(5)
    for i in range(12):
        record(w, float(i), 0.5, float(i) / 100 if i % 2 else math.nan)
    lat, conf, err = contents(w)
    assert lat.tolist() == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert np.isnan(err[[1, 3]]).all() and err[[0, 2, 4]].tolist() == [0.07, 0.09, 0.11]
    assert len(w) == 5 and w.capacity == 5 and w.total == 12
    ts = w.snapshot()["timestamp_ns"]
    assert (np.diff(ts) >= 0).all() and ts[0] > 0


def test_recent_and_baseline_slices():
    w = MetricWindow(60)
    w.record_batch(np.full(15, 200.0), np.full(15, 0.85))
    w.record_batch(np.full(5, 800.0), np.full(5, 0.65), np.array([0.1, np.nan, 0.3, np.nan, 0.5]))
    s = analyze(w, 300.0)
    assert (s.size, s.recent_count, s.baseline_count) == (20, 10, 10)
    assert s.recent_over_threshold == 5 and s.recent_over_latency_mean == 800.0
    assert s.recent_latency_mean == 500.0 and s.baseline_latency_mean == 200.0
    assert s.recent_confidence_mean == pytest.approx(0.75)
    assert s.recent_error_count == 3 and s.recent_error_mean == pytest.approx(0.3)
    assert s.baseline_error_count == 0 and math.isnan(s.baseline_error_mean)
    assert s.all_latency_sum == 15 * 200 + 5 * 800


def test_no_baseline_below_twenty_samples():
    w = MetricWindow(60)
    w.record_batch(np.full(19, 1.0), np.full(19, 1.0))
    s = analyze(w, 0.5)
    assert s.baseline_count == 0 and math.isnan(s.baseline_latency_mean)
    assert s.recent_count == 10 and s.recent_over_threshold == 10


def test_empty_window_statistics():
    s = analyze(MetricWindow(10), 1.0)
    assert (s.size, s.recent_count, s.total_recorded) == (0, 0, 0)
    assert math.isnan(s.recent_latency_mean)
    limits = (MetricWindow.RECENT, MetricWindow.MIN_BASELINE, MetricWindow.MIN_ANALYSIS)
    assert limits == (10, 20, 10)


@pytest.mark.parametrize("args, name", [
    ((-1.0, 0.5), "latency_ms=-1.0"),
    ((math.nan, 0.5), "latency_ms=nan"),
    ((math.inf, 0.5), "latency_ms=inf"),
    ((1.0, 1.5), "confidence=1.5"),
    ((1.0, -0.1), "confidence=-0.1"),
    ((1.0, math.nan), "confidence=nan"),
    ((1.0, 0.5, -2.0), "prediction_error=-2.0"),
    ((1.0, 0.5, math.inf), "prediction_error=inf"),
])
def test_bad_sample_rejected_window_unchanged(args, name):
    w = MetricWindow(10)
    record(w, 3.0, 0.5)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        record(w, *args)
    assert w.total == 1 and contents(w)[0].tolist() == [3.0]


def test_cython_recorder_shares_the_window_and_keeps_it_alive():
    rec = Recorder(MetricWindow(4))
    rec.record_sample(1.0, 0.25)
    rec.record_sample(2.0, 0.75, 0.5)
    assert rec._window.total == 2
    assert contents(rec._window)[2][1] == 0.5
    detached = MetricRecorder()
    with pytest.raises(RuntimeError, match="not attached"):
        detached.record_sample(1.0, 0.5)
    with pytest.raises(RuntimeError, match="not attached"):
        detached._stats(1.0)
    with pytest.raises(ValueError, match="NaN"):
        rec._stats(math.nan)


@pytest.mark.parametrize("lat, conf, err, match", [
    (np.ones((2, 3)), np.ones(6), None, "latencies_ms must be 1-D"),
    (np.ones(3, dtype=np.int64), np.ones(3), None, "floating dtype, got int64"),
    (np.ones(3), np.ones(4), None, "same length"),
    (np.ones(3), np.ones(3), np.ones(2), "same length"),
    ([1.0, 2.0], np.ones(2), None, "must be a NumPy array"),
    (np.array([1.0, -1.0]), np.ones(2), None, r"latencies_ms\[1\]=-1\.0"),
    (np.array([1.0, np.inf]), np.ones(2), None, r"latencies_ms\[1\]=inf"),
    (np.ones(2), np.array([0.5, 1.01]), None, r"confidences\[1\]=1\.01"),
    (np.ones(2), np.ones(2), np.array([np.nan, -np.inf]), r"prediction_errors\[1\]=-inf"),
])
def test_bad_batch_rejected_window_unchanged(lat, conf, err, match):
    w = MetricWindow(10)
    record(w, 3.0, 0.5)
    with pytest.raises(ValueError, match=match):
        w.record_batch(lat, conf, err)
    assert w.total == 1 and contents(w)[0].tolist() == [3.0]


def test_batch_accepts_float32_and_strided_arrays():
    w = MetricWindow(100)
    lat = np.arange(20, dtype=np.float32)
    conf = np.linspace(0, 1, 40)[::2]  # non-contiguous view
    w.record_batch(lat, conf)
    got = contents(w)
    assert got[0].tolist() == lat.astype(float).tolist() and got[1].tolist() == conf.tolist()
    assert np.isnan(got[2]).all()


def test_batch_larger_than_capacity_keeps_newest_and_counts_all():
    w = MetricWindow(8)
    record(w, 1.0, 0.5)
    w.record_batch(np.arange(20.0), np.full(20, 0.5))
    assert w.total == 21 and contents(w)[0].tolist() == list(np.arange(12.0, 20.0))


def test_resize_keeps_newest_samples_and_totals():
    w = MetricWindow(10)
    w.record_batch(np.arange(10.0), np.full(10, 0.5))
    w.resize(4)
    assert contents(w)[0].tolist() == [6.0, 7.0, 8.0, 9.0] and w.total == 10
    record(w, 10.0, 0.5)
    assert contents(w)[0].tolist() == [7.0, 8.0, 9.0, 10.0]
    w.resize(6)
    record(w, 11.0, 0.5)
    assert contents(w)[0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0] and w.capacity == 6
    with pytest.raises(ValueError, match="capacity=0"):
        w.resize(0)
    with pytest.raises(ValueError, match="capacity=-3"):
        MetricWindow(-3)


def test_memory_bytes_for_window_60_is_small():
    w = MetricWindow(60)
    assert 60 * 32 < w.memory_bytes() <= 16 * 1024
    assert MetricWindow(1000).memory_bytes() - w.memory_bytes() == 940 * 32


def test_clear_empties_window_but_keeps_total():
    w = MetricWindow(10)
    w.record_batch(np.ones(5), np.ones(5))
    w.clear()
    assert len(w) == 0 and w.total == 5


def test_large_window_analysis_matches_numpy():
    rng = np.random.default_rng(3)
    w = MetricWindow(100_000)
    lat = rng.exponential(50.0, 250_000)
    conf = rng.random(250_000)
    err = np.where(rng.random(250_000) < 0.3, rng.random(250_000), np.nan)
    w.record_batch(lat, conf, err)
    assert_matches_naive(w, 60.0)
    assert contents(w)[0].tolist() == lat[-100_000:].tolist()


samples = st.tuples(st.floats(0, 1e4), st.floats(0, 1),
                    st.one_of(st.just(math.nan), st.floats(0, 10)))


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 70),
       batches=st.lists(st.lists(samples, max_size=40), max_size=6),
       threshold=st.floats(0, 1e4), resize_to=st.one_of(st.none(), st.integers(1, 70)))
def test_statistics_match_naive(capacity, batches, threshold, resize_to):
    w = MetricWindow(capacity)
    rec = Recorder(w)
    expected: list[tuple[float, float, float]] = []
    for i, batch in enumerate(batches):
        if i % 2:  # alternate the batch path and the per-sample Cython path
            for s in batch:
                rec.record_sample(*s)
        elif batch:
            w.record_batch(*(np.array(col, dtype=float) for col in zip(*batch)))
        expected.extend(batch)
    kept = expected[-capacity:]
    if resize_to is not None:
        w.resize(resize_to)
        kept = kept[-resize_to:]
    assert w.total == len(expected)
    lat, conf, err = contents(w)
    assert lat.tolist() == [s[0] for s in kept] and conf.tolist() == [s[1] for s in kept]
    assert_matches_naive(w, threshold)


def test_threads_record_exact_counts():
    w = MetricWindow(1000)
    recorders = [Recorder(w) for _ in range(4)]
    n = 50_000

    def work(i):
        if i < 4:
            for k in range(n):
                recorders[i].record_sample(float(k % 100), 0.5)
        else:  # batches run without the GIL, concurrently with the per-sample recorders
            ones = np.ones(1000)
            for _ in range(n // 1000):
                w.record_batch(ones, ones)
                analyze(w, 10.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.total == 8 * n
    assert analyze(w, 0.0).all_latency_sum == pytest.approx(4 * 500 * sum(range(100)) + 4 * n)


def test_snapshot_while_another_thread_resizes_and_records():
    w = MetricWindow(5)
    stop = threading.Event()

    def writer():
        k = 0
        ones = np.ones(64)
        while not stop.is_set():
            w.resize(5 if k % 2 else 500)
            w.record_batch(np.arange(k * 64, (k + 1) * 64, dtype=float), ones)
            k += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(2000):
            lat = w.snapshot()["latency_ms"]
            assert len(lat) <= 500 and (np.diff(lat) == 1.0).all()  # newest run, in order
    finally:
        stop.set()
        t.join()


# ------------------------------------------------------------------------------ SampleRing
def test_sample_ring_construction_and_properties():
    r = _core.SampleRing(3, 5, 0)
    assert (r.feature_dim, r.capacity, r.label_kind, r.next_seq, len(r)) == (3, 5, 0, 0, 0)
    assert r.nbytes >= 5 * (3 * 4 + 8 + 4 + 4 + 8 + 8)
    assert isinstance(r._address(), int) and r._address() != 0
    assert _core.SampleRing(2, 2, 1, next_seq=7).next_seq == 7
    for args in ((0, 5, 0), (3, 0, 0), (3, 5, 2)):
        with pytest.raises(ValueError):
            _core.SampleRing(*args)
    with pytest.raises(ValueError, match="next_seq"):
        _core.SampleRing(2, 2, 0, next_seq=-1)


def test_sample_ring_replace_snapshot_sample_clear():
    r = _core.SampleRing(2, 4, 0)
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    r.replace(feats, np.array([7, 8, 9]), np.ones(3, np.float32), np.zeros(3, np.float32),
              np.arange(3.0), np.array([1, 1, 2]), 10)
    assert len(r) == 3 and r.next_seq == 10
    f, lab, conf, err, ts, seq, ep, next_seq = r.snapshot(10)
    np.testing.assert_array_equal(f, feats)
    assert lab.tolist() == [7, 8, 9] and seq.tolist() == [7, 8, 9] and ep.tolist() == [1, 1, 2]
    assert next_seq == 10
    assert r.snapshot(1)[5].tolist() == [9]
    s = r.sample_uniform(np.array([0.0, 0.5, 0.999999]))
    assert s[5].tolist() == [7, 8, 9] and s[1].tolist() == [7, 8, 9] and len(s) == 7
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            r.sample_uniform(np.array([0.5, bad]))
    r.clear()
    assert len(r) == 0 and r.next_seq == 10
    with pytest.raises(ValueError, match="empty"):
        r.sample_uniform(np.array([0.5]))
    assert r.sample_uniform(np.zeros(0))[0].shape == (0, 2)


def test_sample_ring_replace_validates_and_changes_nothing():
    r = _core.SampleRing(2, 3, 0)
    r.replace(np.ones((1, 2), np.float32), np.array([1]), np.ones(1, np.float32),
              np.zeros(1, np.float32), np.zeros(1), np.zeros(1, np.int64), 1)
    good = dict(features=np.ones((2, 2), np.float32), labels=np.array([1, 2]),
                confidence=np.ones(2, np.float32), error=np.zeros(2, np.float32),
                timestamp=np.zeros(2), episode=np.zeros(2, np.int64), next_seq=5)
    for change, needle in (({"features": np.ones((4, 2), np.float32), "labels": np.arange(4),
                             "confidence": np.ones(4, np.float32), "error": np.zeros(4, np.float32),
                             "timestamp": np.zeros(4), "episode": np.zeros(4, np.int64)}, "capacity"),
                           ({"labels": np.array([1.0, 2.0], np.float32)}, "dtype"),
                           ({"confidence": np.ones(3, np.float32)}, "rows"),
                           ({"features": np.ones((2, 3), np.float32)}, "feature_dim"),
                           ({"next_seq": 1}, "next_seq"),
                           ({"error": np.array([0.5, 2.0], np.float32)}, r"errors\[1\]")):
        with pytest.raises(ValueError, match=needle):
            r.replace(**{**good, **change})
        assert len(r) == 1 and r.next_seq == 1


def test_fast_ring_writer_needs_attach():
    w = _fast_ring.SampleRingWriter()
    with pytest.raises(RuntimeError, match="not initialised"):
        w.push([1.0], 1)
    with pytest.raises(TypeError, match="SampleRing"):
        w._attach(object())


def test_fast_ring_writer_drives_the_pybind_object():
    r = _core.SampleRing(2, 4, 1)
    w = _fast_ring.SampleRingWriter()
    w._attach(r)
    del r  # the writer keeps the owner alive
    assert w.push(np.array([1, 2], np.float32), 0.5) == 0
    assert w.extend(np.ones((2, 2), np.float32), np.array([1.5, 2.5], np.float32)) == 1


# ------------------------------------------------------------------------------ type stubs
def _stub_members(module_name):
    """{name: member names} of a compiled module's .pyi (module level under key None)."""
    import ast
    from pathlib import Path

    import vortex

    tree = ast.parse((Path(vortex.__file__).parent / f"{module_name}.pyi").read_text())
    out = {None: set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[None].add(node.name)
            out[node.name] = {n.name if not isinstance(n, ast.AnnAssign) else n.target.id
                              for n in node.body if isinstance(n, (ast.FunctionDef, ast.AnnAssign))}
        elif isinstance(node, ast.FunctionDef):
            out[None].add(node.name)
        elif isinstance(node, ast.AnnAssign):
            out[None].add(node.target.id)
    return out


def _runtime_names(obj):
    return {n for n in vars(obj) if not n.startswith("__") or n in ("__len__", "__version__")} - {
        "_pybind11_conduit_v1_"}


@pytest.mark.parametrize("module_name", ["_core", "_fast_metrics", "_fast_ring", "_fast_shm"])
def test_type_stub_lists_exactly_what_the_module_exposes(module_name):
    import importlib

    module = importlib.import_module(f"vortex.{module_name}")
    stub = _stub_members(module_name)
    public = {n for n in _runtime_names(module) if (not n.startswith("_") or n == "__version__")
              and not isinstance(getattr(module, n), type(importlib))}  # not imported modules
    assert {n for n in stub[None] if not n.startswith("_") or n == "__version__"} == public
    for cls, members in stub.items():
        if cls is not None:
            assert members - {"__init__"} == _runtime_names(getattr(module, cls)), cls


def test_core_stub_parameter_names_match_the_bindings():
    import ast
    import re
    from pathlib import Path

    import vortex

    tree = ast.parse((Path(vortex.__file__).parent / "_core.pyi").read_text())
    checked = 0
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            member = vars(getattr(_core, cls.name))[fn.name]
            if isinstance(member, property):
                continue
            doc = member.__doc__
            sig = re.match(rf"{fn.name}\(self: [\w.]+(?:, )?(.*)\) -> ", doc.lstrip().splitlines()[0])
            assert sig, (cls.name, fn.name, doc)
            bound = [p.split(":")[0] for p in re.split(r", (?=\w+:)", sig.group(1)) if p]
            assert bound == [a.arg for a in fn.args.args[1:]], (cls.name, fn.name)
            checked += 1
    assert checked >= 15


def test_each_per_request_method_of_the_window_has_one_binding():
    # record, set_error and analyze are bound in Cython only, where their checks live
    assert not {"record", "set_error", "analyze"} & set(dir(MetricWindow))
    assert {"record_sample", "record_request", "record_error", "_stats"} <= set(dir(MetricRecorder))
