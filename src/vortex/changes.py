"""Changes to what serves, so that only the latest is watched.

Two components change what a service answers with: the RSI engine applies and rolls back
patches of the service, background training swaps model versions. After its change, each
watches the live requests and undoes the change on a regression. Their windows must not
overlap: an applied patch requests a training run whose swap lands inside the patch's watch,
and each watch would then judge the other's effect (a patch that averages shifted views
lowers every answer's confidence: the swap's watch blamed the new model for it and rolled it
back).

So every change is announced on one :class:`ChangeBoard`, and each component, on hearing of
a change, ends the watch it has running (unjudged; the board audits which change superseded
it) and starts its pre-change baseline anew. Any change ends every running watch, whatever
metric that watch judges: a tunable can move accuracy and latency, a new model its
confidence and latency. One watch runs at a time, it judges the most recent change against
what served just before it, and a regression is attributed to that change.

::

    board = ChangeBoard(audit=audit_log.append)
    board.subscribe(component.on_change)     # ends its watch, returns what it ended (or None)
    board.changed("training", "version 3 swapped in")
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Change", "ChangeBoard"]

log = logging.getLogger(__name__)

_HISTORY = 100


@dataclass(frozen=True)
class Change:
    """One change: its ``source`` ("rsi", "training"), what it was, and when."""

    source: str
    description: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChangeBoard:
    """Announces changes to every subscriber (see the module docstring).

    Parameters
    ----------
    audit
        Called as ``audit(event, **fields)`` for each watch a change ends (the RSI audit log's
        ``append``); it may be set later. Without it the note is only logged.
    """

    def __init__(self, audit: Callable[..., Any] | None = None) -> None:
        self.audit = audit
        self._subscribers: tuple[Callable[[Change], str | None], ...] = ()
        self._lock = threading.Lock()
        self._history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)

    def subscribe(self, on_change: Callable[[Change], str | None]) -> None:
        """Call ``on_change(change)`` on every change; it ends its component's running watch
        (returning a description of it, or None when none ran) and restarts its baseline.
        """
        with self._lock:
            self._subscribers = (*self._subscribers, on_change)

    def changed(self, source: str, description: str) -> Change:
        """Announce a change; every running watch ends. Call it once the change serves, and
        before the changer starts its own watch (whose baseline it took before the change).
        """
        change = Change(source, description, time.time())
        for on_change in self._subscribers:
            try:
                ended = on_change(change)
            except Exception:  # one component's failure must not keep the others' watches on
                log.exception("a change subscriber failed on %s", description)
                continue
            if ended is not None:
                self._superseded(ended, change)
        with self._lock:
            self._history.append({"change": change.to_dict()})
        return change

    def _superseded(self, watch: str, change: Change) -> None:
        note = f"{watch} ended unjudged: {change.source} changed what serves ({change.description})"
        log.info("%s", note)
        with self._lock:
            self._history.append({"superseded": watch, "by": change.to_dict()})
        audit = self.audit
        if audit is not None:
            try:
                audit("watch_superseded", watch=watch, by=change.source, change=change.description,
                      note=note)
            except Exception:
                log.exception("could not audit the end of %s", watch)

    def history(self) -> list[dict[str, Any]]:
        """The newest changes and the watches they ended, oldest first."""
        with self._lock:
            return list(self._history)
