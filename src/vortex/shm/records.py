"""What a reader hands to the control plane: the records, samples and totals of segments.

Plain NumPy columns, no pickling: :class:`MetricRecords` (the metric ring's records),
:class:`SampleRows` (the sample ring's rows, the columns of :class:`vortex.training.Snapshot`)
and :class:`SegmentTotals` (histograms and totals, summable across workers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .histogram import LogHistogram

__all__ = ["MetricRecords", "SampleRows", "SegmentTotals"]


@dataclass(frozen=True)
class MetricRecords:
    """Metric records in write order (columns of equal length).

    Attributes
    ----------
    index
        Record number within its segment (0, 1, ...; int64).
    t_ns
        When it was recorded: ``CLOCK_MONOTONIC`` nanoseconds, the same clock in every process
        of the machine (``time.monotonic_ns()``).
    latency_ms, confidence, error
        float64; error NaN when there was no ground truth.
    request
        The request's number in its worker (int64; -1: a request that never reached the model,
        e.g. a 5xx before it): with the worker's segment id, what a feedback's sample names
        (:attr:`SampleRows.request`).
    version
        The model version that answered (int64; -1: none, or an unversioned model).
    lost
        Records the writer overwrote before the reader got to them.
    """

    index: np.ndarray
    t_ns: np.ndarray
    latency_ms: np.ndarray
    confidence: np.ndarray
    error: np.ndarray
    request: np.ndarray
    version: np.ndarray
    lost: int = 0

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def concat(cls, parts: list[MetricRecords]) -> MetricRecords:
        """The records of several reads (or workers) end to end."""
        if not parts:
            return _EMPTY_METRICS
        def cat(column: str) -> np.ndarray:
            return np.concatenate([getattr(p, column) for p in parts])

        return cls(index=cat("index"), t_ns=cat("t_ns"), latency_ms=cat("latency_ms"),
                   confidence=cat("confidence"), error=cat("error"), request=cat("request"),
                   version=cat("version"), lost=sum(p.lost for p in parts))


_EMPTY_METRICS = MetricRecords(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                               np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))


@dataclass(frozen=True)
class SampleRows:
    """Training samples in push order, the columns of :class:`vortex.training.Snapshot`.

    Attributes
    ----------
    seq
        Sample number within its segment (0, 1, ...; int64).
    features
        ``(n, feature_dim)`` float32.
    labels
        int64 or float32.
    confidence, error
        float32; error NaN when there was no ground truth.
    timestamp
        Seconds since the epoch (float64).
    episode
        int64.
    worker, request, version
        The request the sample labels: its worker's segment id (uint64; any worker's, not
        necessarily the one that pushed the sample), its number there
        (:attr:`MetricRecords.request`) and the model version that answered (int64; -1: not
        known).
    misclassified, nll
        float32 figures of the labelled request (0 or 1; -log p(label)); NaN when not measured
        (``nll`` of a regression).
    lost
        Samples the writer overwrote before the reader got to them.
    """

    seq: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    error: np.ndarray
    timestamp: np.ndarray
    episode: np.ndarray
    worker: np.ndarray
    request: np.ndarray
    version: np.ndarray
    misclassified: np.ndarray
    nll: np.ndarray
    lost: int = 0

    def __len__(self) -> int:
        return len(self.seq)

    @classmethod
    def concat(cls, parts: list[SampleRows]) -> SampleRows:
        """The rows of several reads (or workers) end to end; all must have one shape.

        Raises
        ------
        ValueError
            Parts with different feature_dim or label types (workers of two models).
        """
        if not parts:
            raise ValueError("nothing to concatenate")
        shapes = {(p.features.shape[1], p.labels.dtype) for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"samples of different shapes cannot be concatenated: {sorted(map(str, shapes))}")
        def cat(column: str) -> np.ndarray:
            return np.concatenate([getattr(p, column) for p in parts])

        return cls(seq=cat("seq"), features=cat("features"), labels=cat("labels"),
                   confidence=cat("confidence"), error=cat("error"), timestamp=cat("timestamp"),
                   episode=cat("episode"), worker=cat("worker"), request=cat("request"),
                   version=cat("version"), misclassified=cat("misclassified"), nll=cat("nll"),
                   lost=sum(p.lost for p in parts))


@dataclass(frozen=True)
class SegmentTotals:
    """Everything a segment counted since it was created (or a sum of such).

    Attributes
    ----------
    latency
        Histogram of request latency in **seconds** (``total`` = their sum).
    confidence
        Histogram of confidence.
    records
        Metric records the sums cover (while the writer runs, the histograms may count one
        record in flight more or less than this; they are exact once it is gone).
    error_count, error_sum
        Records that came with a prediction error, and the sum of those errors.
    failed
        Records of requests that failed (``record_sample(..., failed=True)``: the ASGI
        middleware's 5xx responses), counted apart from prediction errors.
    samples
        Samples pushed.
    newest_ns
        When the newest record counted was written (``CLOCK_MONOTONIC`` ns, 0 if none): a
        worker's last activity; a sum keeps the latest.
    """

    latency: LogHistogram
    confidence: LogHistogram
    records: int = 0
    error_count: int = 0
    error_sum: float = 0.0
    samples: int = 0
    newest_ns: int = 0
    failed: int = 0

    @classmethod
    def empty(cls) -> SegmentTotals:
        """Nothing counted."""
        return cls(LogHistogram(), LogHistogram())

    def __add__(self, other: SegmentTotals) -> SegmentTotals:
        if not isinstance(other, SegmentTotals):
            return NotImplemented
        return SegmentTotals(self.latency + other.latency, self.confidence + other.confidence,
                             self.records + other.records, self.error_count + other.error_count,
                             self.error_sum + other.error_sum, self.samples + other.samples,
                             max(self.newest_ns, other.newest_ns), self.failed + other.failed)

    def to_json(self) -> dict:
        """A JSON-ready form (sparse histograms)."""
        return {"latency": self.latency.to_json(), "confidence": self.confidence.to_json(),
                "records": self.records, "error_count": self.error_count,
                "error_sum": self.error_sum, "samples": self.samples, "newest_ns": self.newest_ns,
                "failed": self.failed}

    @classmethod
    def from_json(cls, obj: dict) -> SegmentTotals:
        """Inverse of :meth:`to_json` (ValueError, KeyError or TypeError on anything else)."""
        ints = [obj[k] for k in ("records", "error_count", "samples", "newest_ns", "failed")]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints):
            raise ValueError(f"counts {ints} are not counts")
        return cls(LogHistogram.from_json(obj["latency"]), LogHistogram.from_json(obj["confidence"]),
                   ints[0], ints[1], float(obj["error_sum"]), ints[2], ints[3], ints[4])
