"""When background training runs: the four triggers and the one pending request.

:class:`TrainingTrigger` names why a run started. :class:`TriggerQueue` holds at most one
pending request: requests never stack; one arriving while another is pending is coalesced into
it, and a request with a reason (an RSI patch, a person) wins over one without (a sample
threshold, the schedule). Its thread waits for a request or the next scheduled time and hands
each request to the run callback, one at a time.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["TrainingTrigger", "TriggerQueue"]

log = logging.getLogger(__name__)


class TrainingTrigger(enum.Enum):
    """Why a training run started (an RSI trigger's reason is carried separately)."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    RSI_TRIGGERED = "rsi_triggered"
    SAMPLE_THRESHOLD = "sample_threshold"

    @classmethod
    def parse(cls, value: TrainingTrigger | str) -> TrainingTrigger:
        """Accept a member, its value ("manual") or its name ("MANUAL")."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value.lower() in (member.value, member.name.lower()):
                    return member
        raise ValueError(f"trigger={value!r}: must be one of {[m.value for m in cls]}")


Job = tuple[TrainingTrigger, "str | None"]


class TriggerQueue:
    """The pending run request, the schedule, and the thread that runs requests.

    Parameters
    ----------
    config
        Returns the current :class:`~vortex.config.BackgroundTrainingConfig` (``enabled``,
        ``training_interval_secs``, ``min_samples_for_training``).
    run
        ``run(trigger, reason)``: one run, on the queue's thread (exceptions are logged).
    """

    def __init__(self, config: Callable[[], Any], run: Callable[[TrainingTrigger, str | None], Any]) -> None:
        self._config = config
        self._run = run
        self.cond = threading.Condition()
        self.pending: Job | None = None
        self.in_run = False
        self.stopping = False
        self.seq_at_last_run = 0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ requests
    def request(self, trig: TrainingTrigger, reason: str | None) -> bool:
        """Queue a run; False if coalesced into a pending one (or training is disabled)."""
        if not self._config().enabled:
            return False
        with self.cond:
            if self.pending is not None:
                log.debug("trigger %s coalesced into pending %s", trig.value, self.pending[0].value)
                if reason is not None and self.pending[1] is None:
                    self.pending = (trig, reason)
                return False
            self.pending = (trig, reason)
            self.cond.notify_all()
        return True

    def samples_arrived(self, next_seq: int) -> None:
        """Fire SAMPLE_THRESHOLD once ``min_samples_for_training`` samples arrived since the
        last run's snapshot (``next_seq``: the buffer's next sequence number).
        """
        cfg = self._config()
        # Unlocked read first: while a trigger is pending, every new sample is coalesced into it
        # anyway, and the request path should not take the lock for that.
        if not cfg.enabled or self.pending is not None:
            return
        if next_seq - self.seq_at_last_run >= cfg.min_samples_for_training:
            with self.cond:
                if self.pending is None:  # otherwise coalesced into the pending request
                    self.pending = (TrainingTrigger.SAMPLE_THRESHOLD, None)
                    self.cond.notify_all()

    # ------------------------------------------------------------------ the thread
    def start(self) -> bool:
        """Start the thread; False if it was running."""
        with self.cond:
            if self.is_running():
                return False
            self.stopping = False
            self._thread = threading.Thread(target=self._loop, name="vortex-training", daemon=True)
            self._thread.start()
        return True

    def halt(self) -> None:
        """Tell the thread to stop once the run in progress ends; a pending request stays
        pending (it runs after the next :meth:`start`).
        """
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def join(self, timeout: float | None) -> None:
        """Wait for the halted thread to end."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def is_running(self) -> bool:
        """True while the thread is started."""
        return self._thread is not None and self._thread.is_alive()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no run is in progress or pending; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.in_run or (self.pending is not None and self.is_running()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait(remaining if remaining is not None else 0.5)
        return True

    def _loop(self) -> None:
        interval = self._config().training_interval_secs
        next_scheduled = time.monotonic() + interval
        while True:
            with self.cond:
                if not self.stopping and self.pending is None:
                    remaining = next_scheduled - time.monotonic()
                    if remaining <= 0:
                        self.pending = (TrainingTrigger.SCHEDULED, None)
                        next_scheduled = time.monotonic() + interval
                    else:
                        self.cond.wait(remaining)
                if self.stopping:
                    return
                job = self.pending
                if job is not None and not self._config().enabled:
                    self.pending = job = None
            if job is None:
                continue
            try:
                self._run(*job)
            except Exception:  # the run records failures; this guards the thread against bugs
                log.exception("background training run crashed")
