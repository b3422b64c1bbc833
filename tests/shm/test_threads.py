"""The GIL rule (STYLE.md, 4): the reader's copies run without the GIL while threads of the
same process record and push, and another thread closes the reader under them."""

from __future__ import annotations

import math
import threading

import numpy as np

from vortex.shm import SegmentReader, WorkerSegment

THREADS, CALLS, DIM = 4, 20_000, 5


def _writer(seg, t, errors):
    try:
        for k in range(CALLS):
            v = t * 100_000 + k  # every field follows from v: a record mixing two is detected
            seg.record_sample(float(v), (v % 997) / 997.0, math.nan if v % 2 else (v % 13) / 13.0)
            seg.push(np.full(DIM, v, np.float32) + np.arange(DIM, dtype=np.float32), v,
                     (v % 89) / 89.0, episode=t, timestamp=float(v))
    except BaseException as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def _check(recs, rows):
    """Every field of a record follows from its latency (v), of a sample from its label (v)."""
    v = recs.latency_ms.astype(np.int64)
    np.testing.assert_array_equal(recs.latency_ms, v.astype(np.float64))
    np.testing.assert_array_equal(recs.confidence, (v % 997) / 997.0)
    np.testing.assert_array_equal(recs.error, np.where(v % 2, np.nan, (v % 13) / 13.0))
    labels = rows.labels
    np.testing.assert_array_equal(rows.features, labels[:, None].astype(np.float32) + np.arange(DIM, dtype=np.float32))
    np.testing.assert_array_equal(rows.timestamp, labels.astype(np.float64))
    np.testing.assert_array_equal(rows.episode, labels // 100_000)
    np.testing.assert_array_equal(rows.confidence, ((labels % 89) / 89.0).astype(np.float32))


def test_reads_without_the_gil_beside_writer_threads_and_a_closing_thread(home):
    seg = WorkerSegment.create(home, DIM, window=1 << 18, ring_capacity=1 << 17)
    errors: list[BaseException] = []
    writers = [threading.Thread(target=_writer, args=(seg, t, errors)) for t in range(THREADS)]
    reader = SegmentReader(seg.path)
    seen_labels: list[np.ndarray] = []
    reads = [0]

    def read_loop():
        try:
            while any(w.is_alive() for w in writers) or reads[0] == 0:
                recs, rows = reader.read_metrics(), reader.read_samples()
                _check(recs, rows)
                seen_labels.append(rows.labels)
                reads[0] += 1
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    # A second reader of the same file, closed by another thread while its reads run: every
    # read either completes or says the reader is closed; nothing crashes.
    doomed = SegmentReader(seg.path)
    outcomes = {"read": 0, "closed": 0}

    def doomed_loop():
        while True:
            try:
                _check(doomed.read_metrics(), doomed.read_samples())
                doomed.totals()
                outcomes["read"] += 1
            except ValueError as exc:
                assert "closed" in str(exc)
                outcomes["closed"] += 1
                return

    readers = [threading.Thread(target=read_loop), threading.Thread(target=doomed_loop)]
    for t in writers + readers:
        t.start()
    while outcomes["read"] < 5 and not errors:
        threading.Event().wait(0.001)
    doomed.close()
    for t in writers + readers:
        t.join(timeout=120)
    assert not errors, errors
    assert outcomes["closed"] == 1 and outcomes["read"] >= 5
    tail_recs, tail_rows = reader.read_metrics(), reader.read_samples()
    _check(tail_recs, tail_rows)
    seen_labels.append(tail_rows.labels)
    labels = np.concatenate(seen_labels)
    assert reads[0] > 1 and reader.lost_samples == 0
    assert sorted(labels.tolist()) == sorted(t * 100_000 + k for t in range(THREADS) for k in range(CALLS))
    for t in range(THREADS):  # each thread's samples appear in its own order
        mine = labels[labels // 100_000 == t]
        assert np.all(np.diff(mine) == 1)
    totals = reader.totals()
    assert totals.records == THREADS * CALLS == totals.latency.count == seg.records
    seg.close()
    reader.close()
