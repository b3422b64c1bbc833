"""Per-mode inference performance and per-flux-position success rates.

:class:`PerformanceTracker` keeps, for each inference mode ("fast", "thorough", ...), exact
all-time totals (count, mean latency, mean confidence) and a C++ ring of the newest
``latency_window`` latencies from which p50/p95/p99 are computed. Percentiles are therefore
exact over the most recent ``latency_window`` requests of that mode (NumPy's linear
interpolation), not over all time; memory per mode is fixed (32 bytes per kept request).

Inferences (``record(..., seq=)``) and outcomes (``record_outcome(seq, correct)``) are
counted per flux position ``p = 1 + seq % 9`` (DESIGN.md, FluxDynamics); the sacred positions
3, 6 and 9 are the held-out checkpoints, and their pooled success rate is the sacred-position
success rate. With ``arrival_positions=True`` (what the orchestrator uses: its request ids are
1, 2, 3, ...), an inference recorded without a ``seq`` is numbered by its arrival, so its
position costs nothing on the request path: the per-position counts follow from the total.
"""

from __future__ import annotations

import operator
import threading
from collections import deque
from typing import Any

from .._fast_metrics import MetricRecorder
from .._native import _core

__all__ = ["SACRED_POSITIONS", "PerformanceTracker", "flux_position"]

SACRED_POSITIONS = (3, 6, 9)


def flux_position(seq: int) -> int:
    """Flux position ``1 + seq % 9`` of a global sequence number."""
    return 1 + seq % 9


class _ModeRecorder(MetricRecorder):
    """One mode's ring of recent requests (its ``record_sample`` is the compiled fast path)."""

    def __init__(self, capacity: int) -> None:
        self._attach(_core.MetricWindow(capacity))


class PerformanceTracker:
    """Thread-safe per-mode latency/confidence figures and per-position success rates.

    Parameters
    ----------
    latency_window
        Requests per mode kept for the latency percentiles.
    max_modes
        Distinct modes allowed (bounds memory: each mode keeps ``32 * latency_window`` bytes).
    arrival_positions
        Number the inferences recorded without a ``seq`` 1, 2, 3, ... in arrival order and
        count them at their flux positions (their outcomes must then be recorded under those
        numbers). Off: such inferences have no position.
    """

    def __init__(self, latency_window: int = 10_000, max_modes: int = 64, *,
                 arrival_positions: bool = False) -> None:
        for name, value in (("latency_window", latency_window), ("max_modes", max_modes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer >= 1")
        if not isinstance(arrival_positions, bool):
            raise ValueError(f"arrival_positions={arrival_positions!r}: must be True or False")
        self._capacity = latency_window
        self._arrival_positions = arrival_positions
        self._max_modes = max_modes
        self._modes: dict[str, _ModeRecorder] = {}
        self._lock = threading.Lock()
        self._position_inferences = [0] * 10  # index 1..9
        self._position_outcomes = [0] * 10
        self._position_successes = [0] * 10
        self._recent_outcomes: deque[bool] = deque(maxlen=latency_window)

    def record(self, mode: str, latency_ms: float, confidence: float,
               seq: int | None = None) -> None:
        """Record one inference of ``mode``; ``seq`` (its global sequence number) also counts
        it at its flux position.

        A negative/NaN/infinite latency or a confidence outside [0, 1] raises ``ValueError``
        and nothing is recorded.
        """
        p = None if seq is None else 1 + _check_seq(seq) % 9
        if p is not None and self._arrival_positions:
            raise ValueError(f"seq={seq!r}: this tracker numbers inferences by arrival "
                             "(arrival_positions=True)")
        try:
            rec = self._modes.get(mode)
        except TypeError:  # unhashable: refused by _new_mode
            rec = None
        if rec is not None:
            rec.record_sample(latency_ms, confidence)
        else:
            self._new_mode(mode, (latency_ms, confidence))
        if p is not None:
            with self._lock:
                self._position_inferences[p] += 1

    def recorder(self, mode: str) -> Any:
        """``record_sample(latency_ms, confidence)`` of ``mode`` (created if new): what
        :meth:`record` does without a ``seq``, minus finding the mode (the orchestrator's
        request path keeps one per serving mode).
        """
        rec = self._modes.get(mode) if isinstance(mode, str) else None
        return (rec if rec is not None else self._new_mode(mode)).record_sample

    def record_batch(self, mode: str, latencies_ms: Any, confidences: Any) -> None:
        """Record many inferences of ``mode`` at once, without ``seq`` (1-D floating NumPy
        arrays of equal length; see :meth:`vortex.monitor.RuntimeDetector.record_requests`:
        every value is checked before any is stored, and the copy runs without the GIL).
        """
        rec = self._modes.get(mode) if isinstance(mode, str) else None
        (rec if rec is not None else self._new_mode(mode)).record_requests(latencies_ms, confidences)

    def _new_mode(self, mode: str, first: tuple[float, float] | None = None) -> _ModeRecorder:
        """The recorder of ``mode``, created (with its ``first`` sample, validated before the
        mode appears) if it is new.
        """
        if not isinstance(mode, str) or not mode:
            raise ValueError(f"mode={mode!r}: must be a non-empty string")
        with self._lock:
            rec = self._modes.get(mode)
            if rec is None:
                if len(self._modes) >= self._max_modes:
                    raise ValueError(f"mode={mode!r}: already tracking {self._max_modes} modes "
                                     f"({sorted(self._modes)}); raise max_modes")
                rec = _ModeRecorder(self._capacity)
                if first is not None:
                    rec.record_sample(*first)
                self._modes = {**self._modes, mode: rec}  # readers use the dict without a lock
                return rec
        if first is not None:
            rec.record_sample(*first)
        return rec

    def record_outcome(self, seq: int, correct: bool) -> None:
        """Record whether the inference with sequence number ``seq`` turned out correct
        (``correct`` a bool; anything else raises ``ValueError`` and nothing is recorded).
        """
        p = 1 + _check_seq(seq) % 9
        if not isinstance(correct, bool):
            correct = _check_flag(correct)
        with self._lock:
            self._position_outcomes[p] += 1
            self._position_successes[p] += bool(correct)
            self._recent_outcomes.append(bool(correct))

    @property
    def latency_window(self) -> int:
        """Requests per mode kept (for the percentiles and the ``recent`` figures)."""
        return self._capacity

    @property
    def total_inferences(self) -> int:
        """Inferences recorded over all modes."""
        return sum(rec._window.total for rec in self._modes.values())

    def sacred_success_rate(self) -> float | None:
        """Success rate over outcomes at positions 3, 6 and 9 (``None`` before any)."""
        with self._lock:
            n = sum(self._position_outcomes[p] for p in SACRED_POSITIONS)
            ok = sum(self._position_successes[p] for p in SACRED_POSITIONS)
        return ok / n if n else None

    def summary(self, recent: int | None = None) -> dict[str, Any]:
        """All figures as a JSON-ready dict.

        ``modes[mode]``: count, mean_latency_ms and mean_confidence (all time), p50/p95/p99
        latency (over the newest ``latency_window`` requests; ``window`` says how many);
        ``positions[p]``: inferences, outcomes, successes, success_rate; ``sacred_success_rate``,
        ``success_rate`` (all positions), ``total_inferences``, ``total_outcomes``.

        With ``recent`` (an integer >= 1, at most ``latency_window``), also the figures of the
        newest ``recent`` requests: per mode ``recent_count``, ``recent_mean_latency_ms`` and
        ``recent_mean_confidence``, and ``recent_outcomes`` and ``recent_success_rate`` over
        the newest ``recent`` outcomes. All-time means lag a change for as long as the
        service has run; these follow it (the RSI engine judges by them).
        """
        import numpy as np

        if recent is not None and (isinstance(recent, bool) or not isinstance(recent, int)
                                   or not 1 <= recent <= self._capacity):
            raise ValueError(f"recent={recent!r}: must be an integer in 1..{self._capacity}")
        modes: dict[str, Any] = {}
        for mode, rec in sorted(self._modes.items()):
            window = rec._window
            st = rec._stats(0.0)
            count = st.total_recorded
            kept = window.snapshot()
            latencies = kept["latency_ms"]
            p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]).tolist()
                             if latencies.size else (None, None, None))
            modes[mode] = {
                "count": count,
                "mean_latency_ms": st.all_latency_sum / count if count else None,
                "p50_latency_ms": p50,
                "p95_latency_ms": p95,
                "p99_latency_ms": p99,
                "mean_confidence": st.all_confidence_sum / count if count else None,
                "window": int(latencies.size),
            }
            if recent is not None:
                lat, conf = latencies[-recent:], kept["confidence"][-recent:]
                modes[mode].update(recent_count=int(lat.size),
                                   recent_mean_latency_ms=float(lat.mean()) if lat.size else None,
                                   recent_mean_confidence=float(conf.mean()) if conf.size else None)
        extra: dict[str, Any] = {}
        with self._lock:
            if recent is not None:
                last = list(self._recent_outcomes)[-recent:]
                extra = {"recent_outcomes": len(last),
                         "recent_success_rate": sum(last) / len(last) if last else None}
            inferences = list(self._position_inferences)
            if self._arrival_positions:
                inferences = _arrival_counts(sum(m["count"] for m in modes.values()))
            outcomes = list(self._position_outcomes)
            successes = list(self._position_successes)
        positions = {
            p: {"inferences": inferences[p], "outcomes": outcomes[p],
                "successes": successes[p],
                "success_rate": successes[p] / outcomes[p] if outcomes[p] else None}
            for p in range(1, 10)}
        sacred_n = sum(outcomes[p] for p in SACRED_POSITIONS)
        sacred_ok = sum(successes[p] for p in SACRED_POSITIONS)
        total_outcomes = sum(outcomes)
        return {
            "modes": modes,
            "positions": positions,
            "sacred_success_rate": sacred_ok / sacred_n if sacred_n else None,
            "success_rate": sum(successes) / total_outcomes if total_outcomes else None,
            "total_inferences": sum(m["count"] for m in modes.values()),
            "total_outcomes": total_outcomes,
            **extra,
        }


def _arrival_counts(n: int) -> list[int]:
    """Inferences per flux position (index 1..9) of the numbers 1..n."""
    counts = [0] * 10
    for p in range(1, 10):
        r = p - 1  # 1 + k % 9 == p  <=>  k % 9 == r
        counts[p] = n // 9 + (1 if 0 < r <= n % 9 else 0)
    return counts


def _check_seq(seq: int) -> int:
    try:
        value = operator.index(seq)
    except TypeError:
        value = -1
    if isinstance(seq, bool) or value < 0:
        raise ValueError(f"seq={seq!r}: must be an integer >= 0")
    return value


def _check_flag(value: Any) -> bool:
    """A NumPy bool as a bool; ValueError for anything else (a truthy string is no outcome)."""
    if type(value).__name__ == "bool_":  # numpy.bool_, without importing NumPy here
        return bool(value)
    raise ValueError(f"correct={value!r}: must be True or False")
