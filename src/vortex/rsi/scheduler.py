"""When RSI cycles run: on a schedule, and on the detector's triggers.

One thread runs scheduled cycles every ``cycle_interval_secs``; one thread runs the cycles that
triggers ask for. A trigger is the detector's :class:`~vortex.monitor.weaknesses.RSITriggerEvent`,
handed over on the detector's monitor thread: :meth:`CycleScheduler.on_trigger` only queues its
weaknesses and returns, and events arriving while a triggered cycle runs are merged into the
next one. This is the one hand-off from a detector trigger to a cycle.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..monitor.weaknesses import RSITriggerEvent, Weakness

__all__ = ["CycleScheduler"]

log = logging.getLogger(__name__)


class CycleScheduler:
    """Runs ``cycle(weaknesses or None)`` on a schedule and on triggers.

    Parameters
    ----------
    cycle
        One RSI cycle (:meth:`~vortex.rsi.engine.RSIEngine.rsi_cycle`).
    config
        Returns the current :class:`~vortex.config.RSIConfig` (``enabled``,
        ``cycle_interval_secs``).
    failed
        Called as ``failed(event, exc, trigger=...)`` when a cycle raises; the thread lives on.
    """

    def __init__(self, cycle: Callable[[Sequence[Weakness] | None], Any], config: Callable[[], Any],
                 failed: Callable[..., None]) -> None:
        self._cycle = cycle
        self._config = config
        self._failed = failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trigger_thread: threading.Thread | None = None
        self._pending: list[Weakness] = []

    @property
    def thread(self) -> threading.Thread | None:
        """The scheduled cycles' thread while started."""
        return self._thread

    def on_trigger(self, event: RSITriggerEvent) -> None:
        """Detector subscription: run a cycle on the event's weaknesses in the trigger thread
        (never blocks the caller); events arriving meanwhile are merged.
        """
        if not self._config().enabled:
            return
        with self._lock:
            self._pending.extend(event.weaknesses)
            if self._trigger_thread is not None and self._trigger_thread.is_alive():
                return
            self._trigger_thread = threading.Thread(target=self._drain, daemon=True,
                                                    name="vortex-rsi-trigger")
            self._trigger_thread.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._trigger_thread = None
                    return
            try:
                self._cycle(batch)
            except Exception as exc:  # keep the worker alive
                self._failed("cycle_failed", exc, trigger="detector")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for triggered cycles to finish; False on timeout."""
        t = self._trigger_thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def start(self) -> None:
        """Start scheduled cycles every ``cycle_interval_secs``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vortex-rsi-cycle")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._config().cycle_interval_secs):
            try:
                self._cycle(None)
            except Exception as exc:
                self._failed("cycle_failed", exc, trigger="schedule")

    def stopping(self) -> bool:
        """True once :meth:`stop` was called (a running cycle ends its waits early)."""
        return self._stop.is_set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop scheduled cycles (a running cycle finishes) and wait for triggered ones."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.wait_idle(timeout)
