"""The runtime weakness detector.

:class:`RuntimeDetector` records every request's latency, confidence and (once ground truth
arrives) prediction error into a C++ metric window, and a monitor thread analyses the window
every ``monitor_interval_ms``: the weakness rules of :mod:`vortex.monitor.rules` (one per
:class:`WeaknessType`), each comparing a figure with a threshold or with the window's own
baseline, a cooldown between triggers, and
:class:`RSITriggerEvent` s delivered to subscribers and to :attr:`RuntimeDetector.events`.

Windows: *recent* is the newest 10 samples (for the prediction error: the newest 10 samples
that have ground truth, since labels arrive for only some requests); *baseline* is the older
half of the window once it holds at least 20 samples; an analysis of the samples needs at least
10 of them. Memory pressure and throughput are process-level figures and are checked on every
pass.

Over 300 lines: the window's recording API, the analysis pass (cooldown, history, onsets), the
monitor thread and the stats are one object's state; the checks themselves are the rules'.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from .._fast_metrics import MetricRecorder
from .._native import _core
from .._scalars import as_index
from ..config import RuntimeDetectorConfig
from ..errors import ConfigError
from .memory import ProcessMemoryProbe
from .rules import RULES, Figures
from .weaknesses import RSITriggerEvent, Weakness, WeaknessType

__all__ = ["DetectorStats", "RuntimeDetector"]

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 1000
"""Weaknesses kept for :meth:`RuntimeDetector.get_recent_weaknesses` and pattern recognition."""
EVENT_QUEUE_LIMIT = 1000
"""Trigger events kept in :attr:`RuntimeDetector.events`; the oldest is dropped when full."""
THROUGHPUT_TICKS = 60
"""Per-tick request rates kept; the baseline rate is the mean of all but the last."""

_MIN_ANALYSIS = _core.MetricWindow.MIN_ANALYSIS
_WINDOW_RULES = tuple(r for r in RULES if r.stage == "window")
_PROCESS_RULES = tuple(r for r in RULES if r.stage == "process")
_ONSET_RULES = tuple(r for r in RULES if r.stage == "onsets")
# kinds whose onsets are recorded: every kind but those the onset rules raise themselves
_ONSET_KINDS = tuple(r.kind for r in (*_WINDOW_RULES, *_PROCESS_RULES))


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
    sample has left the window meanwhile); ``first = record_requests(latencies_ms,
    confidences)`` records a batch of requests from NumPy arrays (ids ``first + i``), the
    control plane's way of feeding a whole fleet read in one call. Every method is thread-safe.
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
            t: deque(maxlen=HISTORY_LIMIT) for t in _ONSET_KINDS}
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

        Every rule of :data:`vortex.monitor.rules.RULES` runs over the pass's figures, in the
        table's order. Updates the history and counters, and emits an :class:`RSITriggerEvent`
        to subscribers and :attr:`events` when ``auto_trigger_rsi`` is set, weaknesses were
        found and the cooldown since the previous trigger has elapsed. With ``enabled=False``
        it returns ``[]`` and changes nothing.
        """
        cfg = self._config
        if not cfg.enabled:
            return []
        now = self._clock() if now is None else now
        figures, found = self._evaluate(cfg, now)
        event = None
        with self._lock:
            self._analyses += 1
            if found or self._active:
                found.extend(self._onset_weaknesses(cfg, figures, found))
            if found:
                self._history.extend(found)
                for w in found:
                    self._counts[w.type.value] += 1
                if cfg.auto_trigger_rsi and (
                        self._last_trigger_mono is None
                        or now - self._last_trigger_mono >= cfg.trigger_cooldown_secs):
                    event = RSITriggerEvent(tuple(found), triggered_at=figures.wall)
                    self._last_trigger_mono = now
                    self._last_trigger_wall = figures.wall
                    self._triggers += 1
            subscribers = self._subscribers
        if event is not None:
            self._deliver(event, subscribers)
        return found

    def assess(self) -> list[Weakness]:
        """The weaknesses the window and the process show now, by the same rules as an
        analysis pass (:data:`vortex.monitor.rules.RULES`, but the onset rules, which need a
        pass's history), without counting, recording or triggering anything.

        The RSI engine's scheduled cycles read this: weaknesses come from one detector, with
        one set of thresholds, whether a trigger or the schedule starts the cycle. ``[]`` with
        ``enabled=False``.
        """
        cfg = self._config
        return self._evaluate(cfg, self._clock())[1] if cfg.enabled else []

    def _evaluate(self, cfg: RuntimeDetectorConfig, now: float) -> tuple[Figures, list[Weakness]]:
        """The figures of this pass, and what the "window" and "process" rules find in them."""
        st = self._stats(cfg.latency_spike_threshold_ms)
        with self._lock:
            rates = tuple(self._rates)
        figures = Figures(stats=st if st.size >= _MIN_ANALYSIS else None, samples=st.size,
                          memory_fraction=self.memory_fraction(), rates=rates, wall=time.time(),
                          now=now)
        found: list[Weakness] = []
        for rule in _WINDOW_RULES if figures.stats is not None else ():
            found.extend(rule.check(figures, cfg))
        for rule in _PROCESS_RULES:
            found.extend(rule.check(figures, cfg))
        return figures, found

    def _onset_weaknesses(self, cfg: RuntimeDetectorConfig, figures: Figures,
                          found: list[Weakness]) -> list[Weakness]:
        """Record the onsets of this pass (held lock) and run the "onsets" rules over them.

        An onset is a kind found now that the previous pass did not find, so a weakness
        persisting over many ticks counts once.
        """
        active = frozenset(w.type for w in found)
        new_onsets = active - self._active
        self._active = active
        for kind in new_onsets:
            self._onsets[kind].append(figures.now)
        figures = replace(figures, found=tuple(found), onsets=self._onsets,
                          new_onsets=tuple(new_onsets))
        return [w for rule in _ONSET_RULES for w in rule.check(figures, cfg)]

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
