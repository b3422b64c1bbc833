"""Training runs: the record of one run, and the history kept in ``<home>/runs.json``."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from .._io import atomic_write_bytes
from .statuses import RunStatus
from .triggers import TrainingTrigger

__all__ = ["RunHistory", "TrainingRun"]

log = logging.getLogger(__name__)

HISTORY = 200
"""Runs kept in memory and in ``runs.json``."""


@dataclass
class TrainingRun:
    """Result of one training run.

    ``parent_version`` is the version the run started from; ``validated_against`` the version
    its candidate was finally compared with: the one serving when the run concluded (it differs
    from the parent when a swap happened during the run).

    ``status`` is a :class:`~vortex.training.statuses.RunStatus` (a ``str`` enum: "swapped",
    "rejected", "registered", "not_kept", "skipped", "failed", "timeout" or "cancelled").
    ``ranks`` is the number of processes that trained the candidate (0 until the run's workers
    reported; on several machines, all of theirs).
    """

    run_id: int
    trigger: TrainingTrigger
    reason: str | None
    status: RunStatus = RunStatus.RUNNING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    samples: int = 0
    ranks: int = 0
    train_samples: int = 0
    holdout_samples: int = 0
    parent_version: int | None = None
    validated_against: int | None = None
    version: int | None = None
    swapped: bool = False
    train_loss: float | None = None
    validation: dict[str, Any] | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        d = asdict(self)
        d["trigger"] = self.trigger.value
        return d


class RunHistory:
    """The newest :data:`HISTORY` runs, persisted atomically to ``path`` after each run; an
    unreadable file is logged and ignored (the history is a record, not state a run needs).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._runs: deque[TrainingRun] = deque(maxlen=HISTORY)
        self.next_id = 1
        try:
            with open(path, "rb") as f:
                items = json.loads(f.read())
            for d in items:
                d["trigger"] = TrainingTrigger.parse(d["trigger"])
                d["status"] = RunStatus(d["status"])
                self._runs.append(TrainingRun(**d))
            if self._runs:
                self.next_id = self._runs[-1].run_id + 1
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable run history %s: %s", path, exc)

    def new_run(self, trigger: TrainingTrigger, reason: str | None) -> TrainingRun:
        """A run with the next id (call under the caller's run lock)."""
        run = TrainingRun(run_id=self.next_id, trigger=trigger, reason=reason)
        self.next_id += 1
        return run

    def append(self, run: TrainingRun) -> None:
        """Record a finished run and save the history (a failed save is logged)."""
        self._runs.append(run)
        try:
            data = json.dumps([r.to_dict() for r in self._runs], allow_nan=True).encode()
            atomic_write_bytes(self.path, data)
        except OSError as exc:
            log.warning("could not write the run history: %s", exc)

    def runs(self) -> list[TrainingRun]:
        """Recent runs, oldest first."""
        return list(self._runs)

    def last(self) -> TrainingRun | None:
        """The newest run, if any."""
        return self._runs[-1] if self._runs else None
