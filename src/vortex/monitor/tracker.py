"""Per-mode inference performance and per-flux-position success rates.

:class:`PerformanceTracker` keeps, for each inference mode ("fast", "thorough", ...), exact
all-time totals (count, mean latency, mean confidence) and a C++ ring of the newest
``latency_window`` latencies from which p50/p95/p99 are computed. Percentiles are therefore
exact over the most recent ``latency_window`` requests of that mode (NumPy's linear
interpolation), not over all time; memory per mode is fixed (32 bytes per kept request).

Outcomes (``record_outcome(seq, correct)``) are counted per flux position
``p = 1 + seq % 9`` (DESIGN.md, FluxDynamics); the sacred positions 3, 6 and 9 are the
held-out checkpoints, and their pooled success rate is the sacred-position success rate.
"""

from __future__ import annotations

import operator
import threading
from typing import Any

from .._native import _core
from .._fast_metrics import MetricRecorder

__all__ = ["PerformanceTracker", "SACRED_POSITIONS", "flux_position"]

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
    """

    def __init__(self, latency_window: int = 10_000, max_modes: int = 64) -> None:
        for name, value in (("latency_window", latency_window), ("max_modes", max_modes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer >= 1")
        self._capacity = latency_window
        self._max_modes = max_modes
        self._modes: dict[str, _ModeRecorder] = {}
        self._lock = threading.Lock()
        self._position_inferences = [0] * 10  # index 1..9
        self._position_outcomes = [0] * 10
        self._position_successes = [0] * 10

    def record(self, mode: str, latency_ms: float, confidence: float,
               seq: int | None = None) -> None:
        """Record one inference of ``mode``; ``seq`` (its global sequence number) also counts
        it at its flux position.

        A negative/NaN/infinite latency or a confidence outside [0, 1] raises ``ValueError``
        and nothing is recorded.
        """
        p = None if seq is None else 1 + _check_seq(seq) % 9
        try:
            rec = self._modes.get(mode)
        except TypeError:  # unhashable: refused by _record_new_mode
            rec = None
        if rec is not None:
            rec.record_sample(latency_ms, confidence)
        else:
            self._record_new_mode(mode, latency_ms, confidence)
        if p is not None:
            with self._lock:
                self._position_inferences[p] += 1

    def _record_new_mode(self, mode: str, latency_ms: float, confidence: float) -> None:
        if not isinstance(mode, str) or not mode:
            raise ValueError(f"mode={mode!r}: must be a non-empty string")
        with self._lock:
            rec = self._modes.get(mode)
            if rec is None:
                if len(self._modes) >= self._max_modes:
                    raise ValueError(f"mode={mode!r}: already tracking {self._max_modes} modes "
                                     f"({sorted(self._modes)}); raise max_modes")
                rec = _ModeRecorder(self._capacity)
                rec.record_sample(latency_ms, confidence)  # validates before the mode appears
                self._modes = {**self._modes, mode: rec}  # readers use the dict without a lock
                return
        rec.record_sample(latency_ms, confidence)

    def record_outcome(self, seq: int, correct: bool) -> None:
        """Record whether the inference with sequence number ``seq`` turned out correct
        (``correct`` a bool; anything else raises ``ValueError`` and nothing is recorded)."""
        p = 1 + _check_seq(seq) % 9
        if not isinstance(correct, bool):
            correct = _check_flag(correct)
        with self._lock:
            self._position_outcomes[p] += 1
            self._position_successes[p] += bool(correct)

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

    def summary(self) -> dict[str, Any]:
        """All figures as a JSON-ready dict.

        ``modes[mode]``: count, mean_latency_ms and mean_confidence (all time), p50/p95/p99
        latency (over the newest ``latency_window`` requests; ``window`` says how many);
        ``positions[p]``: inferences, outcomes, successes, success_rate; ``sacred_success_rate``,
        ``success_rate`` (all positions), ``total_inferences``, ``total_outcomes``.
        """
        import numpy as np

        modes: dict[str, Any] = {}
        for mode, rec in sorted(self._modes.items()):
            window = rec._window
            st = window.analyze(0.0)
            count = st.total_recorded
            latencies = window.snapshot()["latency_ms"]
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
        with self._lock:
            inferences = list(self._position_inferences)
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
        }


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
