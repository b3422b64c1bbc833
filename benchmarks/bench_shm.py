"""Shared-memory segments (vortex.shm) side by side with the in-process objects they stand in
for, and with what a user would otherwise pick for cross-process metrics: prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, one mmap'ed file per process).

Groups (ratios printed by conftest.py; goals from issue 14):
- shm.record: ``WorkerSegment.record_sample`` (and ``record_answer``, the serving worker's call
  with the request's number and model version) vs ``RuntimeDetector.record_sample`` (goal: within
  1.5x) and ``record_request`` (the in-process request path's call)
  and vs a prometheus multiprocess ``Histogram.observe``;
- shm.push: ``WorkerSegment.push`` vs ``SampleBuffer.push`` (goal: within 1.5x), one 32-dim row;
- shm.merge: the control plane's merged histograms of 4 workers (``FleetReader.histograms``) vs
  prometheus' ``MultiProcessCollector.collect`` over the files of 4 processes;
- shm.read: the control plane reading 10,000 new records and samples (dim 32) of one worker
  (``FleetReader.read_new``) vs the same hand-over in one process (snapshots of a detector window
  and a SampleBuffer just filled with as many), and a NumPy copy of the same bytes (the
  memory-bandwidth reference, cache-hot).

Run: ``PYTHONPATH=$PWD/src pytest benchmarks/bench_shm.py --benchmark-only``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import values as prometheus_values
from prometheus_client.multiprocess import MultiProcessCollector

from vortex import RuntimeDetector, RuntimeDetectorConfig
from vortex.shm import FleetReader, WorkerSegment
from vortex.shm.histogram import LATENCY_LE_SECONDS
from vortex.shm.location import segment_dir
from vortex.training import SampleBuffer

CALLS = 10_000
VALUES = [float(v) for v in np.random.default_rng(0).exponential(20.0, CALLS)]
DIM = 32
READ = 10_000
WORKERS = 4


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    yield h
    shutil.rmtree(segment_dir(h), ignore_errors=True)


def _prometheus_multiprocess_histogram(directory, monkeypatch, process_id=None):
    """A Histogram whose values live in prometheus_client's per-process mmap files, as in a
    multi-worker server with PROMETHEUS_MULTIPROC_DIR set (``process_id`` stands for a pid)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    kwargs = {} if process_id is None else {"process_identifier": lambda: process_id}
    monkeypatch.setattr(prometheus_values, "ValueClass", prometheus_values.MultiProcessValue(**kwargs))
    hist = Histogram("request_latency_seconds", "request latency", registry=CollectorRegistry(),
                     buckets=LATENCY_LE_SECONDS)
    monkeypatch.undo()
    return hist


def _multiprocess_count(directory) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return next(s.value for m in registry.collect() for s in m.samples if s.name.endswith("_count"))


# -- one request sample -----------------------------------------------------------------------

@pytest.mark.benchmark(group="shm.record (one request sample, per call)")
def test_record_sample_vortex_shared_memory(benchmark, home):
    seg = WorkerSegment.create(home, DIM)
    record = seg.record_sample

    def run():
        for v in VALUES:
            record(v, 0.9)

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)
    assert seg.records % CALLS == 0 and seg.records >= CALLS
    latency, _ = FleetReader(home).histograms()
    assert latency.count == seg.records
    seg.close()


@pytest.mark.benchmark(group="shm.record (one request sample, per call)")
def test_record_answer_vortex_shared_memory(benchmark, home):
    """The serving worker's call: with the request's number and the version that answered it."""
    seg = WorkerSegment.create(home, DIM)
    record = seg.record_answer

    def run():
        for v in VALUES:  # a constant number: the loop stays the other variants' loop
            record(v, 0.9, 17, 3)

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)
    records = FleetReader(home).read_new().all_metrics()
    assert (records.request == 17).all() and (records.version == 3).all()
    seg.close()


@pytest.mark.benchmark(group="shm.record (one request sample, per call)")
@pytest.mark.parametrize("method", ["record_sample", "record_request"])
def test_record_in_process_detector(benchmark, method):
    """The in-process peers: ``record_sample`` (a request with its error, if known) and
    ``record_request`` (record_answer's peer: the orchestrator's request path records a request
    whose error comes later, and gets its id)."""
    det = RuntimeDetector(RuntimeDetectorConfig(window_size=60), memory_probe=lambda: 0.1)
    record = getattr(det, method)

    def run():
        for v in VALUES:
            record(v, 0.9)

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)
    assert det.total_samples % CALLS == 0 and det.total_samples >= CALLS


@pytest.mark.benchmark(group="shm.record (one request sample, per call)")
def test_record_sample_prometheus_multiprocess_histogram(benchmark, tmp_path, monkeypatch):
    hist = _prometheus_multiprocess_histogram(tmp_path, monkeypatch)
    observe = hist.observe

    def run():
        for v in VALUES:
            observe(v / 1000.0)

    benchmark.extra_info["calls_per_round"] = CALLS
    benchmark(run)
    count = _multiprocess_count(tmp_path)
    assert count % CALLS == 0 and count >= CALLS


# -- one training sample ----------------------------------------------------------------------

PUSH_LOOP = 2_000
X = np.random.default_rng(1).normal(size=DIM).astype(np.float32)


@pytest.mark.benchmark(group="shm.push (one 32-dim float32 sample, per call)")
def test_push_vortex_shared_memory(benchmark, home):
    seg = WorkerSegment.create(home, DIM)
    push = seg.push

    def loop():
        for _ in range(PUSH_LOOP):
            push(X, 3, 0.9)

    benchmark.extra_info["calls_per_round"] = PUSH_LOOP
    benchmark.pedantic(loop, rounds=30, warmup_rounds=2)
    fleet = FleetReader(home)
    rows = fleet.read_new().all_samples()
    np.testing.assert_array_equal(rows.features[-1], X)
    assert rows.labels[-1] == 3 and seg.samples % PUSH_LOOP == 0
    seg.close()


@pytest.mark.benchmark(group="shm.push (one 32-dim float32 sample, per call)")
def test_push_in_process_sample_buffer(benchmark):
    buf = SampleBuffer(DIM, 10_000)
    push = buf.push

    def loop():
        for _ in range(PUSH_LOOP):
            push(X, 3, 0.9)

    benchmark.extra_info["calls_per_round"] = PUSH_LOOP
    benchmark.pedantic(loop, rounds=30, warmup_rounds=2)
    assert buf.next_seq % PUSH_LOOP == 0


# -- the control plane: merge and read --------------------------------------------------------

@pytest.mark.benchmark(group="shm.merge (histograms of 4 workers)")
def test_merge_four_workers_vortex(benchmark, home):
    segs = [WorkerSegment.create(home, DIM) for _ in range(WORKERS)]
    for k, seg in enumerate(segs):
        for v in VALUES[k::WORKERS]:
            seg.record_sample(v, 0.9)
    fleet = FleetReader(home)
    latency, confidence = benchmark(fleet.histograms)
    assert latency.count == confidence.count == CALLS
    assert latency.cumulative([float("inf")])[0] == CALLS
    for seg in segs:
        seg.close()


@pytest.mark.benchmark(group="shm.merge (histograms of 4 workers)")
def test_merge_four_workers_prometheus_multiprocess(benchmark, tmp_path, monkeypatch):
    hists = [_prometheus_multiprocess_histogram(tmp_path, monkeypatch, process_id=k) for k in range(WORKERS)]
    for k, hist in enumerate(hists):
        for v in VALUES[k::WORKERS]:
            hist.observe(v / 1000.0)
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, path=str(tmp_path))
    metrics = benchmark(lambda: list(collector.collect()))
    count = next(s.value for m in metrics for s in m.samples if s.name.endswith("_count"))
    assert count == CALLS


def _fill(seg, n):
    for i in range(n):
        seg.record_sample(VALUES[i % CALLS], 0.9)
        seg.push(X, i, 0.9)


@pytest.mark.benchmark(group="shm.read (10,000 new records and samples of a worker)")
def test_read_new_vortex(benchmark, home):
    seg = WorkerSegment.create(home, DIM, window=READ, ring_capacity=READ)
    fleet = FleetReader(home)
    got = []

    def read():
        got.append(fleet.read_new())

    benchmark.pedantic(read, setup=lambda: _fill(seg, READ), rounds=15, warmup_rounds=1)
    batch = got[-1]
    assert len(batch.all_metrics()) == READ and len(batch.all_samples()) == READ
    assert batch.all_samples().lost == 0
    np.testing.assert_array_equal(batch.all_samples().features[-1], X)
    seg.close()


@pytest.mark.benchmark(group="shm.read (10,000 new records and samples of a worker)")
def test_read_in_process_snapshots(benchmark):
    """The same hand-over inside one process: the detector's window and the sample buffer
    filled with 10,000 records and rows (untimed), then copied out."""
    det = RuntimeDetector(RuntimeDetectorConfig(window_size=READ), memory_probe=lambda: 0.1)
    buf = SampleBuffer(DIM, READ)
    got = []

    def fill():
        for i in range(READ):
            det.record_sample(VALUES[i % CALLS], 0.9)
            buf.push(X, i, 0.9)

    benchmark.pedantic(lambda: got.append((det._window.snapshot(), buf.snapshot(READ))), setup=fill,
                       rounds=15, warmup_rounds=1)
    window, snap = got[-1]
    assert len(window["latency_ms"]) == READ and len(snap.labels) == READ


@pytest.mark.benchmark(group="shm.read (10,000 new records and samples of a worker)")
def test_read_numpy_copy_of_the_same_bytes(benchmark):
    """The bytes a read moves: 10,000 sample slots (48 + 128 bytes) and metric slots (96)."""
    src = np.ones(READ * (48 + 4 * DIM + 96), np.uint8)
    dst = np.empty_like(src)
    benchmark(np.copyto, dst, src)
    assert dst[-1] == 1
