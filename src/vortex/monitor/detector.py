"""The runtime weakness detector.

:class:`RuntimeDetector` records every request's latency, confidence and (once ground truth
arrives) prediction error into a C++ metric window, and a monitor thread analyses the window
every ``monitor_interval_ms``: seven kinds of weakness (see :class:`WeaknessType`), each
compared with a threshold or with the window's own baseline, a cooldown between triggers, and
:class:`RSITriggerEvent` s delivered to subscribers and to :attr:`RuntimeDetector.events`.

Windows: *recent* is the newest 10 samples (for the prediction error: the newest 10 samples
that have ground truth, since labels arrive for only some requests); *baseline* is the older
half of the window once it holds at least 20 samples; an analysis of the samples needs at least
10 of them. Memory pressure and throughput are process-level figures and are checked on every
pass.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .._fast_metrics import MetricRecorder
from .._native import _core
from .._scalars import as_index
from ..config import RuntimeDetectorConfig
from ..errors import ConfigError
from .memory import ProcessMemoryProbe
from .weaknesses import RSITriggerEvent, Weakness, WeaknessType

__all__ = ["DetectorStats", "RuntimeDetector"]

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 1000
"""Weaknesses kept for :meth:`RuntimeDetector.get_recent_weaknesses` and pattern recognition."""
EVENT_QUEUE_LIMIT = 1000
"""Trigger events kept in :attr:`RuntimeDetector.events`; the oldest is dropped when full."""
THROUGHPUT_TICKS = 60
"""Per-tick request rates kept; the baseline rate is the mean of all but the last."""
MIN_BASELINE_TICKS = 3
"""Earlier ticks needed before a ThroughputDrop can be judged."""

_RECENT = _core.MetricWindow.RECENT
_MIN_ANALYSIS = _core.MetricWindow.MIN_ANALYSIS
_BASE_TYPES = (WeaknessType.LATENCY_SPIKE, WeaknessType.CONFIDENCE_DROP,
                 WeaknessType.CONFIDENCE_LOW, WeaknessType.PREDICTION_ERROR_SPIKE,
                 WeaknessType.MEMORY_PRESSURE, WeaknessType.THROUGHPUT_DROP)


def _clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class DetectorStats:
    """A snapshot of the detector's figures (``None``: not available yet).

    Attributes
    ----------
    total_samples
        Samples recorded since the detector was created (exact across threads).
    window_size, samples_in_window, window_fill
        Window capacity, samples it holds, and their ratio.
    recent_latency_ms, baseline_latency_ms, recent_confidence, baseline_confidence
        Mean latency and confidence of the recent slice (newest 10) and of the baseline (older
        half of the window, once it holds >= 20 samples).
    recent_prediction_error
        Mean error of the newest 10 samples that have ground truth.
    memory_fraction
        Resident memory over the process's limit (None when it cannot be read).
    throughput_rps
        Request rate of the last monitor tick.
    weaknesses_detected
        Number of detections per weakness type (``WeaknessType.value`` keys).
    triggers_emitted, last_trigger_at
        Trigger events emitted, and the wall-clock time of the last one.
    analyses, is_running
        Analysis passes run, and whether the monitor thread is running.
    """

    total_samples: int
    window_size: int
    samples_in_window: int
    window_fill: float
    recent_latency_ms: float | None
    baseline_latency_ms: float | None
    recent_confidence: float | None
    baseline_confidence: float | None
    recent_prediction_error: float | None
    memory_fraction: float | None
    throughput_rps: float
    weaknesses_detected: dict[str, int]
    triggers_emitted: int
    last_trigger_at: float | None
    analyses: int
    is_running: bool

    def to_dict(self) -> dict[str, Any]:
        """The figures as a JSON-ready dict."""
        return asdict(self)


class RuntimeDetector(MetricRecorder):
    """Watches an inference service's requests and raises weaknesses.

    Parameters
    ----------
    config
        Thresholds and periods (:class:`vortex.RuntimeDetectorConfig`).
    memory_probe
        Callable returning resident memory over the limit; default
        :class:`vortex.monitor.memory.ProcessMemoryProbe` (the real process figure).
    clock
        Monotonic clock in seconds used for throughput, cooldown and patterns; default
        :func:`time.monotonic`.

    Notes
    -----
    ``record_sample(latency_ms, confidence, prediction_error=nan)`` is a compiled method of
    the base class (about 50 ns): it validates the values (``ValueError`` naming a bad one;
    nothing stored) and records them with a monotonic timestamp. When the ground truth comes
    later, ``sample_id = record_request(latency_ms, confidence)`` records the request and
    ``record_error(sample_id, prediction_error)`` attaches its error on arrival (False if the
    sample has left the window meanwhile). Every method is thread-safe.
    Subscribers are called in the thread that ran the analysis (the monitor thread).

    Examples
    --------
    >>> det = RuntimeDetector(RuntimeDetectorConfig(latency_spike_threshold_ms=300))
    >>> for ms in [200.0] * 15 + [800.0] * 5:
    ...     det.record_sample(ms, 0.9)
    >>> [w.type.value for w in det.analyze()]
    ['latency_spike']
    """

    events: queue.Queue[RSITriggerEvent]
    """Trigger events, for consumers that poll instead of subscribing (bounded, oldest dropped)."""

    def __init__(self, config: RuntimeDetectorConfig | None = None, *,
                 memory_probe: Callable[[], float] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        config = RuntimeDetectorConfig() if config is None else config
        _check_config(config)
        self._config = config
        self._attach(_core.MetricWindow(config.window_size))
        self._memory_probe = memory_probe if memory_probe is not None else ProcessMemoryProbe()
        self._clock = clock if clock is not None else time.monotonic
        self._lock = threading.Lock()
        self._history: deque[Weakness] = deque(maxlen=HISTORY_LIMIT)
        self._counts = {t.value: 0 for t in WeaknessType}
        self._active: frozenset[WeaknessType] = frozenset()
        self._onsets: dict[WeaknessType, deque[float]] = {
            t: deque(maxlen=HISTORY_LIMIT) for t in _BASE_TYPES}
        self._subscribers: tuple[Callable[[RSITriggerEvent], None], ...] = ()
        self.events = queue.Queue(maxsize=EVENT_QUEUE_LIMIT)
        self._last_trigger_mono: float | None = None
        self._last_trigger_wall: float | None = None
        self._triggers = 0
        self._analyses = 0
        self._created = (self._clock(), 0)
        self._last_tick: tuple[float, int] | None = None
        self._rates: deque[float] = deque(maxlen=THROUGHPUT_TICKS)
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()

    # -- recording -------------------------------------------------------------------------

    def record_batch(self, latencies_ms: Any, confidences: Any,
                     prediction_errors: Any | None = None) -> None:
        """Record many samples at once from 1-D floating NumPy arrays of equal length.

        All values are validated before any is stored: a wrong shape, dtype or length, or any
        bad value raises ``ValueError`` naming it, and the window is unchanged. The copy runs
        without the GIL. Every sample gets the same timestamp.
        """
        self._window.record_batch(latencies_ms, confidences, prediction_errors)

    @property
    def total_samples(self) -> int:
        """Samples recorded since creation."""
        return self._window.total

    def __len__(self) -> int:
        return len(self._window)

    def memory_bytes(self) -> int:
        """Bytes of the C++ metric window (object and ring), beyond this Python object."""
        return self._window.memory_bytes()

    # -- configuration ---------------------------------------------------------------------

    @property
    def config(self) -> RuntimeDetectorConfig:
        """The current configuration."""
        return self._config

    def update_config(self, config: RuntimeDetectorConfig) -> None:
        """Switch to ``config``; a new ``window_size`` keeps the newest samples.

        The monitor thread picks up a new ``monitor_interval_ms`` after its current wait.
        """
        _check_config(config)
        with self._lock:
            if config.window_size != self._config.window_size:
                self._window.resize(config.window_size)
            self._config = config

    # -- process figures -------------------------------------------------------------------

    def memory_fraction(self) -> float:
        """Resident memory over the process's limit (cgroup limit if set, else RAM), now; NaN
        when the resident memory cannot be read (no memory-pressure weakness is raised then).
        """
        return float(self._memory_probe())

    def throughput_rps(self) -> float:
        """Request rate of the last monitor tick (before the first tick: since creation)."""
        with self._lock:
            if self._rates:
                return self._rates[-1]
            t0, n0 = self._created
            dt = self._clock() - t0
            return (self._window.total - n0) / dt if dt > 0 else 0.0

    def tick(self, now: float | None = None) -> list[Weakness]:
        """One monitor tick: measure the request rate since the last tick, then :meth:`analyze`.

        The monitor thread calls this every ``monitor_interval_ms``; ``now`` (seconds of the
        detector's clock) is for deterministic tests and replays.
        """
        now = self._clock() if now is None else now
        total = self._window.total
        with self._lock:
            if self._last_tick is not None:
                t0, n0 = self._last_tick
                if now > t0:
                    self._rates.append((total - n0) / (now - t0))
            self._last_tick = (now, total)
        return self.analyze(now)

    # -- analysis --------------------------------------------------------------------------

    def analyze(self, now: float | None = None) -> list[Weakness]:
        """Run one analysis pass now and return the weaknesses found.

        Updates the history and counters, and emits an :class:`RSITriggerEvent` to
        subscribers and :attr:`events` when ``auto_trigger_rsi`` is set, weaknesses were found
        and the cooldown since the previous trigger has elapsed. With ``enabled=False`` it
        returns ``[]`` and changes nothing.
        """
        cfg = self._config
        if not cfg.enabled:
            return []
        now = self._clock() if now is None else now
        wall = time.time()
        st = self._stats(cfg.latency_spike_threshold_ms)
        n = st.size
        found: list[Weakness] = []
        if n >= _MIN_ANALYSIS:
            self._sample_weaknesses(cfg, st, wall, found)
        memory = self.memory_fraction()
        if memory > cfg.memory_pressure_threshold:
            thr = cfg.memory_pressure_threshold
            found.append(Weakness(
                WeaknessType.MEMORY_PRESSURE, _clip01((memory - thr) / (1.0 - thr)),
                f"resident memory is {memory:.2%} of the process's limit "
                f"(threshold {thr:.2%})", wall, memory, float(thr), n))
        event = None
        with self._lock:
            self._analyses += 1
            self._throughput_weakness(cfg, wall, n, found)
            if found or self._active:
                self._pattern_weaknesses(cfg, now, wall, n, found)
            if found:
                self._history.extend(found)
                for w in found:
                    self._counts[w.type.value] += 1
                if cfg.auto_trigger_rsi and (
                        self._last_trigger_mono is None
                        or now - self._last_trigger_mono >= cfg.trigger_cooldown_secs):
                    event = RSITriggerEvent(tuple(found), triggered_at=wall)
                    self._last_trigger_mono = now
                    self._last_trigger_wall = wall
                    self._triggers += 1
            subscribers = self._subscribers
        if event is not None:
            self._deliver(event, subscribers)
        return found

    @staticmethod
    def _sample_weaknesses(cfg: RuntimeDetectorConfig, st: Any, wall: float,
                           found: list[Weakness]) -> None:
        n = st.size
        rn = st.recent_count
        over = st.recent_over_threshold
        if over >= cfg.latency_spike_count:
            thr = cfg.latency_spike_threshold_ms
            severity = 0.5 * over / rn + 0.5 * (1.0 - thr / st.recent_over_latency_mean)
            found.append(Weakness(
                WeaknessType.LATENCY_SPIKE, _clip01(severity),
                f"{over} of the last {rn} requests took longer than {thr:g} ms "
                f"(recent mean {st.recent_latency_mean:.1f} ms, max "
                f"{st.recent_latency_max:.1f} ms)", wall, st.recent_latency_mean, float(thr), n))
        recent_conf = st.recent_confidence_mean
        if st.baseline_count:
            base_conf = st.baseline_confidence_mean
            drop = base_conf - recent_conf
            if drop > cfg.confidence_drop_threshold:
                found.append(Weakness(
                    WeaknessType.CONFIDENCE_DROP, _clip01(drop / base_conf),
                    f"mean confidence fell from {base_conf:.3f} (baseline of "
                    f"{st.baseline_count} samples) to {recent_conf:.3f} over the last {rn} "
                    f"(drop {drop:.3f} > {cfg.confidence_drop_threshold:g})",
                    wall, recent_conf, base_conf, n))
        thr = cfg.confidence_low_threshold
        if recent_conf < thr:
            found.append(Weakness(
                WeaknessType.CONFIDENCE_LOW, _clip01((thr - recent_conf) / thr),
                f"mean confidence of the last {rn} requests is {recent_conf:.3f}, below "
                f"{thr:g}", wall, recent_conf, float(thr), n))
        if st.recent_error_count:
            err = st.recent_error_mean
            thr = cfg.prediction_error_spike_threshold
            if err > thr:
                found.append(Weakness(
                    WeaknessType.PREDICTION_ERROR_SPIKE, _clip01(1.0 - thr / err),
                    f"mean prediction error of the {st.recent_error_count} most recent requests "
                    f"with ground truth is {err:.3f}, above {thr:g}", wall, err, float(thr), n))

    def _throughput_weakness(self, cfg: RuntimeDetectorConfig, wall: float, n: int,
                             found: list[Weakness]) -> None:
        rates = self._rates
        if len(rates) <= MIN_BASELINE_TICKS:
            return
        last = rates[-1]
        baseline = (sum(rates) - last) / (len(rates) - 1)
        if baseline <= 0.0:
            return
        drop = 1.0 - last / baseline
        if drop > cfg.throughput_drop_threshold:
            found.append(Weakness(
                WeaknessType.THROUGHPUT_DROP, _clip01(drop),
                f"request rate fell to {last:.1f}/s from a baseline of {baseline:.1f}/s over "
                f"{len(rates) - 1} ticks ({drop:.0%} drop > "
                f"{cfg.throughput_drop_threshold:.0%})", wall, last, baseline, n))

    def _pattern_weaknesses(self, cfg: RuntimeDetectorConfig, now: float, wall: float, n: int,
                            found: list[Weakness]) -> None:
        # An occurrence is an onset: a type found now that was not found by the previous pass,
        # so a weakness persisting over many ticks counts once.
        active = frozenset(w.type for w in found)
        onsets = active - self._active
        self._active = active
        for kind in sorted(onsets, key=lambda k: k.value):
            times = self._onsets[kind]
            times.append(now)
            if not cfg.enable_pattern_recognition:
                continue
            recent = [t for t in times if now - t <= cfg.pattern_period_secs]
            if len(recent) < cfg.pattern_min_occurrences:
                continue
            intervals = [b - a for a, b in itertools.pairwise(recent)]
            mean = statistics.fmean(intervals)
            if mean <= 0.0:
                continue
            # regularity: 1 - coefficient of variation of the intervals between onsets
            score = _clip01(1.0 - statistics.pstdev(intervals) / mean)
            if score >= cfg.pattern_confidence_threshold:
                found.append(Weakness(
                    WeaknessType.RECURRING_PATTERN, score,
                    f"{kind.value} began {len(recent)} times in the last "
                    f"{cfg.pattern_period_secs:g} s, every {mean:.1f} s on average "
                    f"(regularity {score:.2f})", wall, float(len(recent)), mean, n))

    # -- events ----------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[RSITriggerEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every trigger event; returns the unsubscribe function.

        A callback that raises is logged and does not stop the others or the monitor thread.
        """
        if not callable(callback):
            raise TypeError(f"callback={callback!r} is not callable")
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                subs = list(self._subscribers)
                if callback in subs:
                    subs.remove(callback)
                self._subscribers = tuple(subs)

        return unsubscribe

    def _deliver(self, event: RSITriggerEvent,
                 subscribers: tuple[Callable[..., None], ...]) -> None:
        logger.info("RSI trigger: %s", event.reason)
        while True:
            try:
                self.events.put_nowait(event)
                break
            except queue.Full:
                try:
                    self.events.get_nowait()
                    logger.warning("detector event queue full; dropped the oldest event")
                except queue.Empty:
                    pass
        for callback in subscribers:
            try:
                callback(event)
            except Exception:
                logger.exception("trigger subscriber %r raised; ignored", callback)

    # -- monitor thread --------------------------------------------------------------------

    def start(self) -> None:
        """Start the monitor thread (a no-op if it is running)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop_event = threading.Event()
            self._last_tick = (self._clock(), self._window.total)
            self._thread = threading.Thread(target=self._run, args=(self._stop_event,),
                                            name="vortex-runtime-detector", daemon=True)
            self._thread.start()
        logger.info("runtime detector started (every %d ms)", self._config.monitor_interval_ms)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the monitor thread and wait for it (at most ``timeout`` seconds)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("runtime detector thread did not stop within %s s", timeout)

    @property
    def is_running(self) -> bool:
        """Whether the monitor thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._config.monitor_interval_ms / 1000.0):
            try:
                self.tick()
            except Exception:
                logger.exception("runtime detector analysis failed; continuing")

    def __enter__(self) -> RuntimeDetector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- reporting -------------------------------------------------------------------------

    def get_recent_weaknesses(self, n: int = 10) -> list[Weakness]:
        """The ``n`` most recently detected weaknesses, oldest first."""
        n = as_index(n, "n", 0)
        with self._lock:
            return list(self._history)[-n:] if n else []

    def stats(self) -> DetectorStats:
        """The detector's current figures."""
        st = self._stats(self._config.latency_spike_threshold_ms)
        throughput = self.throughput_rps()
        memory = self.memory_fraction()
        has = st.size > 0
        with self._lock:
            return DetectorStats(
                total_samples=st.total_recorded,
                window_size=st.capacity,
                samples_in_window=st.size,
                window_fill=st.size / st.capacity,
                recent_latency_ms=st.recent_latency_mean if has else None,
                baseline_latency_ms=st.baseline_latency_mean if st.baseline_count else None,
                recent_confidence=st.recent_confidence_mean if has else None,
                baseline_confidence=st.baseline_confidence_mean if st.baseline_count else None,
                recent_prediction_error=_finite_or_none(st.recent_error_mean),
                memory_fraction=_finite_or_none(memory),
                throughput_rps=throughput,
                weaknesses_detected=dict(self._counts),
                triggers_emitted=self._triggers,
                last_trigger_at=self._last_trigger_wall,
                analyses=self._analyses,
                is_running=self.is_running,
            )


def _check_config(config: object) -> None:
    if not isinstance(config, RuntimeDetectorConfig):
        raise ConfigError(f"config={config!r}: must be a RuntimeDetectorConfig")
