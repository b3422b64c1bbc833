"""Changes to what serves, so that only the latest is watched.

Two components change what a service answers with: the RSI engine applies and rolls back
patches of the service, background training swaps model versions. After its change, each
watches the live requests and undoes the change on a regression. Their windows must not
overlap: an applied patch requests a training run whose swap lands inside the patch's watch,
and each watch would then judge the other's effect (a patch that averages shifted views
lowers every answer's confidence: the swap's watch blamed the new model for it and rolled it
back).

So every change is announced on one :class:`ChangeBoard`, which is also the one signal path
from the request path to the watches: it keeps the served requests' figures since the last
change (the baseline of the next change, :meth:`ChangeBoard.recent`), runs the one
:class:`~vortex.watch.RegressionWatch` of the latest change, and is fed each request's
figures once (:meth:`ChangeBoard.answered` when a request is answered,
:meth:`ChangeBoard.labelled` when its ground truth arrives; :meth:`ChangeBoard.observe` for
any figures). A change ends the running watch
(unjudged; the board audits which change superseded it) and starts the baseline anew, whatever
metric that watch judges: a tunable can move accuracy and latency, a new model its confidence
and latency.
One watch runs at a time, it judges the most recent change against what served just before
it, and a regression is attributed to that change.

::

    board = ChangeBoard(audit=audit_log.append)
    board.keep(50)                                         # baseline: the last 50 requests
    board.answered(version, 12.5, 0.9)                      # request path: answered...
    board.labelled(version, 0.2, 0.0, 0.22)                 # ...and its ground truth
    baseline = board.recent("error", 50)                    # before the change
    board.changed("training", "version 3 swapped in", watch=RegressionWatch(...))
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .watch import RegressionWatch

__all__ = ["OBSERVED", "Change", "ChangeBoard"]

log = logging.getLogger(__name__)

_HISTORY = 100
_ANY = object()

OBSERVED = ("latency_ms", "confidence", "error", "misclassified", "nll", "labelled_confidence")
"""The per-request figures :meth:`ChangeBoard.observe` takes: when a request is answered, its
latency and confidence; when its ground truth arrives, its error, whether it was
misclassified, its NLL and, again, its confidence (``labelled_confidence``: the confidence of
the requests the error figures cover)."""
NLL_CAP = -math.log(5e-324)
"""The NLL of a label given probability 0 (that of the smallest double): what a feedback reports
instead of infinity."""
_ANSWERED = frozenset({"latency_ms", "confidence"})
_LABELLED = ("error", "misclassified", "nll", "labelled_confidence")  # labelled()'s order


@dataclass(frozen=True)
class Change:
    """One change: its ``source`` ("rsi", "training"), what it was, and when."""

    source: str
    description: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        """The change as a JSON-ready dict (as :meth:`ChangeBoard.history` lists it)."""
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
        self._keep = 0
        self._kept: frozenset[str] = frozenset()
        self._keep_answered = False
        # (position in labelled()'s arguments, name) of each kept figure of a labelled request
        self._keep_labelled: tuple[tuple[int, str], ...] = ()
        self._recent: dict[str, deque[tuple[int | None, float]]] = {}
        self._watch: RegressionWatch | None = None
        self._watch_source: str | None = None  # the source of the change the watch judges
        self._watch_ended = threading.Condition(self._lock)

    def subscribe(self, on_change: Callable[[Change], str | None]) -> None:
        """Call ``on_change(change)`` on every change; it ends a watch of its own (returning a
        description of it, or None when none ran) for components that run one outside the
        board.
        """
        with self._lock:
            self._subscribers = (*self._subscribers, on_change)

    # ------------------------------------------------------------------ the signal path
    def keep(self, requests: int, figures: Iterable[str] = OBSERVED) -> None:
        """Keep at least the last ``requests`` values of ``figures`` since the last change
        (each component asks for the baseline its watches need; figures nobody keeps are not
        recorded, so the request path does not pay for them).
        """
        if requests <= 0:
            return
        with self._lock:
            self._kept = self._kept | frozenset(figures)
            self._keep_answered = bool(self._kept & _ANSWERED)
            self._keep_labelled = tuple((i, n) for i, n in enumerate(_LABELLED) if n in self._kept)
            if requests > self._keep:
                self._keep = requests
                self._recent = {k: deque(d, maxlen=requests) for k, d in self._recent.items()}

    @property
    def needs_observations(self) -> bool:
        """Whether a request's ground truth has any use here (:meth:`labelled`): False while no
        watch runs and nobody keeps a baseline of it; the request path then skips the call.
        """
        return bool(self._keep_labelled) or self._watch is not None

    def observe(self, version: int | None = None, **figures: float | None) -> None:
        """Record one request's figures (names from :data:`OBSERVED`; None or NaN: not
        measured) served by model ``version``: into the baseline, and into the running watch.
        (The request path calls :meth:`answered` and :meth:`labelled`, its positional forms.)
        A watch that fills up is judged here, and its callback runs on this thread; its failures
        are logged, never raised.
        """
        if self._keep:
            for name, value in figures.items():
                if value is not None and value == value and name in self._kept:
                    d = self._recent.get(name)
                    (self._series(name) if d is None else d).append((version, float(value)))
        if self._watch is not None:
            self._to_watch(version, figures)

    def answered(self, version: int | None, latency_ms: float, confidence: float) -> None:
        """:meth:`observe` of a request just answered, by the request path: positional and
        finite figures, so that it costs about a tenth of a microsecond when nothing watches.
        """
        if self._keep_answered:
            recent = self._recent
            lat, conf = recent.get("latency_ms"), recent.get("confidence")
            if lat is None or conf is None:
                lat, conf = self._series("latency_ms"), self._series("confidence")
            # no lock: deque.append is atomic, and a value racing a change's clear() lands on
            # one side of it or the other, as the request itself did
            lat.append((version, latency_ms))
            conf.append((version, confidence))
        if self._watch is not None:
            self._to_watch(version, {"latency_ms": latency_ms, "confidence": confidence})

    def labelled(self, version: int | None, error: float, misclassified: float,
                 nll: float | None, confidence: float) -> None:
        """:meth:`observe` of a request whose ground truth arrived, by the request path
        (positional and finite; ``nll`` None for regression; ``confidence`` the request's, as
        ``labelled_confidence``).
        """
        if self._keep_labelled:  # the kept figures only, without observe()'s keyword dict
            values = (error, misclassified, nll, confidence)
            recent = self._recent
            for i, name in self._keep_labelled:
                value = values[i]
                if value is not None:
                    d = recent.get(name)
                    (self._series(name) if d is None else d).append((version, value))
        if self._watch is not None:
            self._to_watch(version, {"error": error, "misclassified": misclassified, "nll": nll,
                                     "labelled_confidence": confidence})

    def _series(self, name: str) -> deque[tuple[int | None, float]]:
        return self._recent.setdefault(name, deque(maxlen=self._keep))

    def _to_watch(self, version: int | None, figures: dict[str, float | None]) -> None:
        """Count ``figures`` in the running watch; judge it once full (outside the lock)."""
        with self._lock:
            w = self._watch
            if w is None or not w.add(version, figures):
                return
            self._watch = None
            self._watch_ended.notify_all()
        verdict = w.verdict()
        callback = w.on_regress if verdict.regressed else w.on_pass
        try:
            if callback is not None:
                callback(verdict)
        except Exception:  # the request must succeed; the watch's owner reports its own
            log.exception("the verdict of %s could not be acted on", w.description)

    def recent(self, metric: str, n: int, version: Any = _ANY) -> list[float]:
        """The last ``n`` values of ``metric`` since the last change (of requests served by
        ``version`` when given), oldest first: the baseline of the next change.
        """
        with self._lock:  # list() copies the deque in one C call: no append lands mid-copy
            items = list(self._recent.get(metric, ()))
        values = [v for ver, v in items if version is _ANY or ver == version]
        return values[-n:] if n > 0 else []

    def watching(self) -> RegressionWatch | None:
        """The running watch, if any."""
        return self._watch

    def wait_for_other_watch(self, source: str, timeout: float,
                             cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Wait while a watch of another source's change runs, up to ``timeout`` seconds (or
        until ``cancelled()``, checked every 0.1 s); True once none runs.

        An automatic change calls this before it announces itself, so that the change already
        serving is judged on its own rather than ended unjudged: an applied patch requests a
        training run, which (the worker forked in milliseconds) can be ready to swap before
        the patch's watch has seen a request.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._watch is not None and self._watch_source != source:
                left = deadline - time.monotonic()
                if left <= 0 or cancelled():
                    return False
                self._watch_ended.wait(min(left, 0.1))
            return True

    def changed(self, source: str, description: str,
                watch: RegressionWatch | None = None) -> Change:
        """Announce a change; the running watch ends and the baseline starts anew. Call it
        once the change serves, with the ``watch`` that judges it (its baseline taken from
        :meth:`recent` before the change), if any.
        """
        change = Change(source, description, time.time())
        with self._lock:
            ended, self._watch = self._watch, None
            self._watch_ended.notify_all()
            for d in self._recent.values():
                d.clear()
        if ended is not None:
            self._superseded(f"{ended.description} ({ended.progress()})", change)
        for on_change in self._subscribers:
            try:
                ended_elsewhere = on_change(change)
            except Exception:  # one component's failure must not keep the others' watches on
                log.exception("a change subscriber failed on %s", description)
                continue
            if ended_elsewhere is not None:
                self._superseded(ended_elsewhere, change)
        with self._lock:
            self._history.append({"change": change.to_dict()})
            self._watch, self._watch_source = watch, source
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
