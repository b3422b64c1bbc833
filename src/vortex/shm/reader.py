"""The control plane's view of one worker's segment: :class:`SegmentReader`.

A reader maps the segment read-only and copies what it needs without ever blocking its writer
(the protocol is in ``csrc/shm_reader.hpp`` and docs/SHM.md). It keeps two cursors, the next
metric record and the next sample it has not read; each read returns everything new since,
and says how many records the writer overwrote before the reader got to them.

Whether the writer still runs is the kernel's answer: the writer holds the file's ``flock``
until it closes or dies. Once it is gone, the reader checks the whole file once
(``SegmentCorruptError`` on any inconsistency) and its figures are final.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._native import _core
from .histogram import LogHistogram
from .location import parse_segment_name
from .records import MetricRecords, SampleRows, SegmentTotals

__all__ = ["SegmentReader"]

_ALL = 1 << 62  # "no limit" for the binding's row count


def _totals(agg: dict) -> SegmentTotals:
    return SegmentTotals(LogHistogram(agg["latency"], agg["latency_sum_s"]),
                         LogHistogram(agg["confidence"], agg["confidence_sum"]),
                         int(agg["records"]), int(agg["error_count"]), float(agg["error_sum"]),
                         int(agg["samples"]), int(agg["newest_ns"]), int(agg["failed_count"]))


def _limit(name: str, value: int | None) -> int:
    if value is None:
        return _ALL
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative integer or None")
    return int(value)


class SegmentReader:
    """Reads one worker's segment from another process (or the same one).

    Parameters
    ----------
    path
        The segment file.
    metric_cursor, sample_cursor
        The first metric record and sample to read (0: everything the rings still hold).

    Raises
    ------
    vortex.errors.SegmentCorruptError
        The file is not a whole segment (checked at once for a dead writer's segment, record by
        record while the writer runs), naming the file and the byte offset.
    OSError
        It cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str], *, metric_cursor: int = 0,
                 sample_cursor: int = 0) -> None:
        self.path = Path(path)
        self._reader = _core.ShmReader(os.fspath(path))
        info = self._reader.info()
        self.pid: int = info["writer_pid"]
        self.start_ticks: int = info["writer_start_ticks"]
        self.segment_id: int = info["segment_id"]
        self.feature_dim: int = info["feature_dim"]
        self.label_dtype = "int64" if info["label_kind"] == 0 else "float32"
        self.window: int = info["metric_capacity"]
        self.ring_capacity: int = info["sample_capacity"]
        self.created: float = info["created_unix_ns"] / 1e9
        self.metric_cursor = _limit("metric_cursor", metric_cursor)
        self.sample_cursor = _limit("sample_cursor", sample_cursor)
        self.lost_records = 0
        self.lost_samples = 0
        try:
            self.alive()  # a dead writer's segment is checked whole right away
        except BaseException:
            self._reader.close()
            raise

    @property
    def name(self) -> str:
        return self.path.name

    def matches_name(self) -> bool:
        """True if the file name names this segment's writer and id (a renamed or forged file
        does not).
        """
        return parse_segment_name(self.name) == (self.pid, self.start_ticks, self.segment_id)

    def alive(self) -> bool:
        """Whether a process still holds the writer's lock (the segment may still change).

        The first time it answers False, the whole file is checked
        (``SegmentCorruptError`` on damage) and the figures become final.
        """
        if self._reader.is_static:
            return False
        if self._reader.writer_alive():
            return True
        self._reader.verify_static()
        return False

    def read_metrics(self, max_records: int | None = None) -> MetricRecords:
        """The metric records written since the cursor (at most ``max_records``); advances it."""
        index, t, lat, conf, err, request, version, nxt, lost = self._reader.read_metrics(
            self.metric_cursor, _limit("max_records", max_records))
        self.metric_cursor = int(nxt)
        self.lost_records += int(lost)
        return MetricRecords(index, t, lat, conf, err, request, version, int(lost))

    def read_samples(self, max_rows: int | None = None) -> SampleRows:
        """The samples pushed since the cursor (at most ``max_rows``); advances it."""
        seq, feat, labels, conf, err, ts, ep, worker, request, version, miss, nll, nxt, lost = \
            self._reader.read_samples(self.sample_cursor, _limit("max_rows", max_rows))
        self.sample_cursor = int(nxt)
        self.lost_samples += int(lost)
        return SampleRows(seq, feat, labels, conf, err, ts, ep, worker, request, version, miss, nll, int(lost))

    def totals(self) -> SegmentTotals:
        """Histograms and totals of everything the segment counted (final once the writer is
        gone; see :class:`SegmentTotals` for the live case).
        """
        return _totals(self._reader.aggregate())

    def counters(self) -> tuple[int, int, bool]:
        """``(metric records published, samples published, closed)`` now."""
        _, records, samples, closed = self._reader.counters()
        return int(records), int(samples), bool(closed)

    def at_end(self) -> bool:
        """True when the writer is gone and both cursors reached its last complete record."""
        if self.alive():
            return False
        final = self.totals()
        return self.metric_cursor >= final.records and self.sample_cursor >= final.samples

    def lock_exclusive(self) -> bool:
        """Take the file's lock (False if its writer, or another reader, holds it)."""
        return bool(self._reader.lock_exclusive())

    def unlock(self) -> None:
        self._reader.unlock()

    def close(self) -> None:
        """Unmap the segment (the file stays)."""
        self._reader.close()

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SegmentReader({str(self.path)!r}, pid={self.pid}, metric_cursor={self.metric_cursor}, "
                f"sample_cursor={self.sample_cursor})")
