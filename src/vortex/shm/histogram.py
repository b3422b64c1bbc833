"""Mergeable log-bucket histograms: the latency and confidence distributions of the workers.

Every worker counts into the same fixed buckets (``csrc/log_buckets.hpp``), so histograms merge
by adding counts, and a merged histogram is exactly the histogram of all the observations.

Bucket scheme: two significant decimal digits over nine decades. The upper bounds are
``1.0e-6, 1.1e-6, ..., 9.9e-6, 1.0e-5, ..., 9.9e2, 1.0e3`` (:data:`BOUNDS`, 811 values, each the
double nearest to its decimal); bucket ``i`` counts the values ``BOUNDS[i-1] < v <= BOUNDS[i]``
(upper bound included, as Prometheus' ``le``), bucket 0 everything up to 1e-6 and the last
bucket everything above 1e3. Every bound of Prometheus' default buckets is one of them, so a
classic Prometheus histogram with any sensible ``le`` set (:data:`LATENCY_LE_SECONDS`,
:data:`CONFIDENCE_LE`) is an exact prefix sum of this one (:meth:`LogHistogram.cumulative`).

Error bound: a bucket is at most 10% wide relative to its lower bound, so :meth:`quantile`,
which returns the midpoint of the bucket holding the order statistic, is within
:data:`RELATIVE_ERROR` (5%) of it for values in (1e-6, 1e3].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .._native import _core

__all__ = [
    "BOUNDS",
    "CONFIDENCE_LE",
    "LATENCY_LE_SECONDS",
    "N_BUCKETS",
    "RELATIVE_ERROR",
    "LogHistogram",
    "bucket_indices",
]

BOUNDS: np.ndarray = _core.bucket_bounds()
"""Upper bounds of buckets ``0 .. N_BUCKETS - 2``; the last bucket is ``+Inf``."""
BOUNDS.flags.writeable = False
N_BUCKETS: int = int(_core.SHM_BUCKETS)
RELATIVE_ERROR = 0.05
"""Largest relative error of :meth:`LogHistogram.quantile` for values in (1e-6, 1e3]."""
LATENCY_LE_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                      5.0, 10.0)
"""A classic Prometheus bucket set for request latency in seconds (each one of :data:`BOUNDS`)."""
CONFIDENCE_LE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
"""A classic Prometheus bucket set for model confidence (each one of :data:`BOUNDS`)."""


def bucket_indices(values: Any) -> np.ndarray:
    """The bucket of each value, as the writers count it (int64, flattened)."""
    return _core.bucket_indices(np.asarray(values, dtype=np.float64))


class LogHistogram:
    """Counts per bucket of :data:`BOUNDS`, and the sum of the values counted.

    Parameters
    ----------
    counts
        ``N_BUCKETS`` non-negative integer counts (copied); None for an empty histogram.
    total
        The sum of the values counted (Prometheus' ``_sum``).
    """

    __slots__ = ("counts", "total")

    def __init__(self, counts: Any = None, total: float = 0.0) -> None:
        if counts is None:
            self.counts = np.zeros(N_BUCKETS, dtype=np.uint64)
        else:
            arr = np.asarray(counts)
            if arr.shape != (N_BUCKETS,) or arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
                raise ValueError(f"counts must be {N_BUCKETS} non-negative integers, got "
                                 f"shape {arr.shape} dtype {arr.dtype}")
            self.counts = arr.astype(np.uint64, copy=True)
        self.total = float(total)

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray) -> LogHistogram:
        """The histogram of ``values`` (a worker counting them one by one gets the same)."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        counts = np.bincount(bucket_indices(arr), minlength=N_BUCKETS).astype(np.uint64)
        return cls(counts, float(arr.sum()))

    @property
    def count(self) -> int:
        """Number of values counted."""
        return int(self.counts.sum())

    def __add__(self, other: LogHistogram) -> LogHistogram:
        if not isinstance(other, LogHistogram):
            return NotImplemented
        return LogHistogram(self.counts + other.counts, self.total + other.total)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogHistogram):
            return NotImplemented
        return bool(np.array_equal(self.counts, other.counts)) and self.total == other.total

    __hash__ = None  # type: ignore[assignment]  # mutable counts

    def __repr__(self) -> str:
        return f"LogHistogram(count={self.count}, total={self.total!r})"

    def quantile(self, q: float) -> float:
        """An estimate of the ``q``-quantile, within :data:`RELATIVE_ERROR` of the true one.

        The true quantile is the order statistic of rank ``max(1, ceil(q * count))`` (the
        "inverted CDF" definition); the estimate is the midpoint of its bucket, ``BOUNDS[0]``
        when it is at most 1e-6, ``inf`` above 1e3, NaN for an empty histogram.
        """
        if isinstance(q, bool) or not isinstance(q, (int, float, np.floating)) or not 0.0 <= q <= 1.0:
            raise ValueError(f"q={q!r} must be a number in [0, 1]")
        n = self.count
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(q * n))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        if i == 0:
            return float(BOUNDS[0])
        if i >= len(BOUNDS):
            return math.inf
        return float((BOUNDS[i - 1] + BOUNDS[i]) / 2.0)

    def cumulative(self, le: Sequence[float]) -> np.ndarray:
        """Counts of the values ``<= le[k]`` for each bound (Prometheus' classic buckets).

        Every bound must be one of :data:`BOUNDS` or ``inf``, so that each count is exact.
        """
        cum = np.cumsum(self.counts)
        out = np.empty(len(le), dtype=np.uint64)
        for k, bound in enumerate(le):
            if bound == math.inf:
                out[k] = cum[-1]
                continue
            i = int(np.searchsorted(BOUNDS, bound))
            if i >= len(BOUNDS) or BOUNDS[i] != bound:
                raise ValueError(f"le={bound!r} is not a bucket bound (two significant digits "
                                 "between 1e-06 and 1000, or inf)")
            out[k] = cum[i]
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form: the non-zero counts by bucket index, and the total."""
        nz = np.flatnonzero(self.counts)
        return {"counts": {str(int(i)): int(self.counts[i]) for i in nz}, "total": self.total}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LogHistogram:
        """Inverse of :meth:`to_json` (ValueError on anything else)."""
        counts = np.zeros(N_BUCKETS, dtype=np.uint64)
        for key, value in dict(obj["counts"]).items():
            i = int(key)
            if not 0 <= i < N_BUCKETS or isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"bucket {key!r}: {value!r} is not a count")
            counts[i] = value
        total = obj["total"]
        if isinstance(total, bool) or not isinstance(total, (int, float)):
            raise ValueError(f"total={total!r} is not a number")
        return cls(counts, float(total))
