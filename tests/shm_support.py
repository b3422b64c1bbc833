"""Patterned records for the shared-memory tests: every field of record i is a function of i,
so a reader that got a torn or misplaced record sees a mismatch (the writer scripts, the fault
loaders and the tests share these)."""

from __future__ import annotations

import math
import struct

import numpy as np

# Byte offsets of csrc/shm_layout.hpp (docs/SHM.md), for tests that edit segments by hand.
BEGUN, COUNT, SAMPLES, CLOSED = 192, 200, 208, 216
CLOSED_MARK = 0x21216465736F6C63
HIST = 256
N_BUCKETS = 812
METRIC_RING = (HIST + 2 * N_BUCKETS * 8 + 63) // 64 * 64
METRIC_SLOT = 120


def sample_ring_at(window: int) -> int:
    return (METRIC_RING + window * METRIC_SLOT + 63) // 64 * 64


def sample_slot_size(dim: int) -> int:
    return 16 + 64 + (dim * 4 + 7) // 8 * 8


def metric_slot_at(n: int, window: int) -> int:
    return METRIC_RING + (n % window) * METRIC_SLOT


def u64(path, at: int, value: int | None = None) -> int | None:
    """The little-endian word at byte ``at`` of ``path``, or write ``value`` there."""
    with open(path, "r+b") as fh:
        fh.seek(at)
        if value is None:
            return struct.unpack("<Q", fh.read(8))[0]
        fh.write(struct.pack("<Q", value))
    return None


def uncount(path, histogram: int, value: float) -> None:
    """Take one observation of ``value`` out of histogram 0 (latency s) or 1 (confidence)."""
    from vortex.shm.histogram import bucket_indices

    at = HIST + (histogram * N_BUCKETS + int(bucket_indices([value])[0])) * 8
    u64(path, at, u64(path, at) - 1)


DIM = 6
TIMESTAMP0 = 1.7e9
PERIOD = 1 << 16  # every column but label, episode and timestamp is a function of i % PERIOD


def metric_values(i: int) -> tuple[float, float, float]:
    """(latency_ms, confidence, prediction_error) of record i."""
    j = i % PERIOD
    latency = j * 0.15  # 0 .. 9.8 s: spans five histogram decades
    confidence = (j % 1024) / 1023.0
    error = math.nan if j % 4 else (j % 12) / 12.0
    return latency, confidence, error


def metric_ids(i: int) -> tuple[int | None, int | None] | None:
    """(request, version) of record i, written with record_answer (None: the format's "none",
    -1 when read); None for the records written with record_sample (those with an error)."""
    j = i % PERIOD
    if j % 4 == 0:
        return None
    return (None if j % 7 == 3 else 3 * j + 1), (None if j % 5 == 4 else j % 5 + 1)


def sample_origin(i: int) -> tuple | None:
    """push_feedback's (worker, request, version, misclassified, nll) of sample i; None for the
    samples written with push."""
    j = i % PERIOD
    if j % 6 == 5:
        return None
    return (0xABCDEF0123456789 ^ j, None if j % 7 == 2 else 2 * j, None if j % 3 == 2 else j % 3,
            None if j % 4 == 3 else float(j % 2), None if j % 5 == 0 else j / 8)


def _write_one(seg, i: int, lat: float, conf: float, err: float, ids, features, s_conf: float, s_err: float,
               origin) -> None:
    if ids is None:
        seg.record_sample(lat, conf, err)
    else:
        seg.record_answer(lat, conf, *ids)
    if origin is None:
        seg.push(features, i, s_conf, s_err, i // 7, TIMESTAMP0 + i)
    else:
        seg.push_feedback(features, i, s_conf, s_err, i // 7, *origin, TIMESTAMP0 + i)


def sample_values(i: int, dim: int = DIM) -> tuple[np.ndarray, int, float, float, int, float]:
    """(features, label, confidence, error, episode, timestamp) of sample i."""
    j = i % PERIOD
    features = (float(j) + np.arange(dim)).astype(np.float32)
    return features, i, (j % 100) / 100.0, math.nan if j % 2 else (j % 10) / 10.0, i // 7, TIMESTAMP0 + i


class Writer:
    """Writes the patterned records fast (precomputed columns), so that a kill often lands
    inside a record rather than in the Python around it."""

    def __init__(self, seg) -> None:
        self.seg = seg
        j = np.arange(PERIOD)  # the columns of metric_values and sample_values, vectorised
        self.lat = (j * 0.15).tolist()
        self.conf = ((j % 1024) / 1023.0).tolist()
        self.err = np.where(j % 4, np.nan, (j % 12) / 12.0).tolist()
        self.features = list((j[:, None] + np.arange(seg.feature_dim)).astype(np.float32))
        self.s_conf = ((j % 100) / 100.0).tolist()
        self.s_err = np.where(j % 2, np.nan, (j % 10) / 10.0).tolist()
        self.ids = [metric_ids(k) for k in range(PERIOD)]
        self.origins = [sample_origin(k) for k in range(PERIOD)]

    def write(self, i: int) -> None:
        j = i & (PERIOD - 1)
        _write_one(self.seg, i, self.lat[j], self.conf[j], self.err[j], self.ids[j], self.features[j],
                   self.s_conf[j], self.s_err[j], self.origins[j])


def write(seg, i: int) -> None:
    """Record metric i and push sample i (the dim comes from the segment)."""
    features, _, conf, err, _, _ = sample_values(i, seg.feature_dim)
    _write_one(seg, i, *metric_values(i), metric_ids(i), features, conf, err, sample_origin(i))


def _none(value) -> int:
    return -1 if value is None else value


def _same_float32(want, got) -> bool:
    want = math.nan if want is None else want
    return (math.isnan(want) and math.isnan(got)) or np.float32(want) == got


def check_metrics(records) -> None:
    """Every record read is exactly the patterned record of its index."""
    for k, i in enumerate(records.index.tolist()):
        lat, conf, err = metric_values(i)
        got = (records.latency_ms[k], records.confidence[k], records.error[k])
        same_err = (math.isnan(err) and math.isnan(got[2])) or err == got[2]
        assert got[0] == lat and got[1] == conf and same_err, f"record {i}: {got} != {(lat, conf, err)}"
        request, version = metric_ids(i) or (None, None)
        assert (records.request[k], records.version[k]) == (_none(request), _none(version)), f"record {i}"


def check_samples(rows, dim: int = DIM) -> None:
    """Every sample read is exactly the patterned sample of its seq (float32 columns)."""
    for k, i in enumerate(rows.seq.tolist()):
        features, label, conf, err, episode, ts = sample_values(i, dim)
        assert np.array_equal(rows.features[k], features), f"sample {i}: features {rows.features[k]}"
        assert rows.labels[k] == label and rows.episode[k] == episode and rows.timestamp[k] == ts, i
        assert rows.confidence[k] == np.float32(conf), i
        assert (math.isnan(err) and math.isnan(rows.error[k])) or rows.error[k] == np.float32(err), i
        worker, request, version, misclassified, nll = sample_origin(i) or (0, None, None, None, None)
        assert int(rows.worker[k]) == worker and rows.request[k] == _none(request), i
        assert rows.version[k] == _none(version), i
        assert _same_float32(misclassified, rows.misclassified[k]), i
        assert _same_float32(nll, rows.nll[k]), i


def latency_seconds(n: int) -> np.ndarray:
    """The latencies of records 0 .. n-1 in seconds, as the writer converts them (ms / 1000)."""
    return ((np.arange(n) % PERIOD) * 0.15) / 1000.0


def confidences(n: int) -> np.ndarray:
    return (np.arange(n) % PERIOD % 1024) / 1023.0


def sequential_sum(values) -> float:
    """A left-to-right float sum (the writer's running total, bit for bit): ``add.accumulate``
    adds in order, unlike ``sum``'s pairwise summation."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.add.accumulate(values)[-1]) if len(values) else 0.0


WRITER = r"""
import sys
from vortex.shm import WorkerSegment
import shm_support as s
home, n, window, ring = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
seg = WorkerSegment.create(home, s.DIM, window=window, ring_capacity=ring)
writer = s.Writer(seg)
print(seg.path, flush=True)
print("ready", flush=True)
for i in range(n):
    writer.write(i)
    if i % 4096 == 4095:
        print("ack", i + 1, flush=True)
seg.close()
print("done", n, flush=True)
"""
"""A writer process: ``python -c WRITER home n window ring``. Prints its segment's path, then
"ready", then "ack <count>" after every 4096 records (each acknowledged record was fully
written), and "done <n>" after closing."""


def writer_code(home, n: int, window: int, ring: int) -> str:
    """WRITER with its arguments, for ``python -c`` (and ``harness.kill_at_random``)."""
    return f"import sys; sys.argv[1:] = {[str(home), str(n), str(window), str(ring)]!r}\n" + WRITER
