"""Fallbacks: what Vortex does less well because its environment lacks something.

When a component cannot work the intended way it falls back rather than stop: the RSI
sandbox without a working bubblewrap runs candidates unjailed (and never applies them
automatically); the memory probe without ``/proc/self/statm`` cannot read the resident
memory, so memory-pressure detection is off. Such a fallback must never be silent: each is
logged as a warning once per process and kept here, from where
:meth:`vortex.Orchestrator.system_status` reports it (``degraded``) and the orchestrator
records it in ``<home>/degraded.json``, which ``vortex status`` shows.

::

    from vortex import degraded
    degraded.report("rsi sandbox", "candidates tested unjailed", "bwrap is not installed")
    [f.to_dict() for f in degraded.active()]
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ._io import atomic_write_bytes, pid_alive
from .errors import CorruptFileError
from .home import HomeLayout

__all__ = [
    "Fallback",
    "active",
    "read_record",
    "report",
    "subscribe",
    "unsubscribe",
    "write_record",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fallback:
    """One fallback: which ``component``, what it does instead (``fallback``), and why
    (``cause``); ``since`` is the wall-clock time it was first reported in this process.
    """

    component: str
    fallback: str
    cause: str
    since: float

    def to_dict(self) -> dict[str, Any]:
        """The fallback as a JSON-ready dict (an entry of ``degraded.json`` and of the status)."""
        return asdict(self)


_lock = threading.Lock()
_active: dict[tuple[str, str], Fallback] = {}
_listeners: list[Callable[[Fallback], None]] = []


def report(component: str, fallback: str, cause: str) -> Fallback:
    """Record that ``component`` falls back to ``fallback`` because of ``cause``.

    The first report of a (component, fallback) pair in this process logs a warning and
    notifies the subscribers; later ones return the recorded :class:`Fallback` silently.
    """
    key = (component, fallback)
    with _lock:
        known = _active.get(key)
        if known is not None:
            return known
        entry = _active[key] = Fallback(component, fallback, cause, time.time())
        listeners = list(_listeners)
    log.warning("%s: %s (%s)", component, fallback, cause)
    for listener in listeners:
        try:
            listener(entry)
        except Exception:  # a listener's failure (a full disk, say) must not hide the fallback
            log.exception("a listener of degraded.report failed")
    return entry


def active() -> list[Fallback]:
    """Every fallback reported in this process, oldest first."""
    with _lock:
        return sorted(_active.values(), key=lambda f: f.since)


def subscribe(listener: Callable[[Fallback], None]) -> None:
    """Call ``listener(fallback)`` on each new fallback (from the thread that reports it)."""
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Callable[[Fallback], None]) -> None:
    """Stop calling ``listener`` (no error if it was not subscribed)."""
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def write_record(home: str | os.PathLike[str]) -> None:
    """Write this process's fallbacks to ``<home>/degraded.json`` (atomically; an empty list
    replaces what an earlier process on the home recorded).
    """
    data = {"pid": os.getpid(), "written_at": time.time(),
            "fallbacks": [f.to_dict() for f in active()]}
    atomic_write_bytes(HomeLayout(home).degraded,
                       json.dumps(data, indent=1).encode(), mode=0o644)


def read_record(home: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record under ``home`` (None when there is none), with ``process_running``: whether
    the process that wrote it still runs.

    Raises
    ------
    CorruptFileError
        The file is not such a record.
    """
    path = HomeLayout(home).degraded
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    remedy = "delete it: the next process on this home writes it again"
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(path, f"not valid JSON ({exc})", remedy=remedy) from None
    fields = set(Fallback.__dataclass_fields__)
    if not (isinstance(data, dict) and isinstance(data.get("pid"), int)
            and isinstance(data.get("fallbacks"), list)
            and all(isinstance(f, dict) and set(f) == fields for f in data["fallbacks"])):
        raise CorruptFileError(path, "not a record of fallbacks (pid, fallbacks)", remedy=remedy)
    return {**data, "process_running": pid_alive(data["pid"])}
