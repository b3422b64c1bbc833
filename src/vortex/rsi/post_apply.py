"""The watch after an apply: judges an applied proposal by the requests served after it.

Which figure: the benchmark metric the proposal was tested on when served requests measure it
too (:data:`SERVED_METRIC`: a calibration is judged by its NLL, not by the raw confidence it
lowers), else the figure its weakness rule names (:func:`vortex.monitor.rules.watched_metric`).
The baseline is that figure over the requests served since the last change before the apply;
the watch itself is a :class:`~vortex.watch.RegressionWatch` on the shared
:class:`~vortex.changes.ChangeBoard`, and a regression beyond ``watch_regression_threshold``
rolls the proposal back (on a thread of its own: a rollback writes files, the verdict comes
from the request path). Every outcome is audited.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from ..changes import ChangeBoard
from ..monitor.rules import watched_metric
from ..watch import RegressionWatch, Verdict
from .proposal import ImprovementProposal

__all__ = ["SERVED_METRIC", "PostApplyWatch"]

log = logging.getLogger(__name__)

# benchmark metrics a served request measures too: benchmark name -> (observed figure, lower
# is better). The watch judges a change by the metric it was tested on (a calibration tested
# on its NLL, not on the raw confidence it lowers); see ChangeBoard.observe for the figures.
SERVED_METRIC: dict[str, tuple[str, bool]] = {
    "nll": ("nll", True),
    "error_rate": ("misclassified", True),
    "latency_ms": ("latency_ms", True),
    "confidence": ("confidence", False),
}


class PostApplyWatch:
    """Starts and concludes the watches of applied proposals (see the module docstring).

    Parameters
    ----------
    engine
        The :class:`~vortex.rsi.engine.RSIEngine`: its ``config`` (``watch_requests``,
        ``watch_regression_threshold``), ``settings``, ``audit``, ``rollback_proposal`` and
        ``_background_failed``.
    changes
        The board the watch runs on.
    """

    def __init__(self, engine: Any, changes: ChangeBoard) -> None:
        self.engine = engine
        self.changes = changes
        changes.keep(engine.config.watch_requests)

    def watched_metric(self, p: ImprovementProposal) -> tuple[str, bool, str]:
        """What the watch after ``p`` judges: the served figure, whether lower is better, and
        why that one (see the module docstring).
        """
        tested = (p.test_result or {}).get("metric") or self.engine.settings.metric_for(p.weakness_type)
        if tested in SERVED_METRIC:
            metric, lower = SERVED_METRIC[tested]
            return metric, lower, f"the {tested} it was tested on"
        try:
            metric, lower = watched_metric(p.weakness_type)
        except (KeyError, ValueError):  # a kind no rule raises (a hand-made proposal)
            metric, lower = "latency_ms", True
        return metric, lower, f"its benchmark's {tested} is not measured on served requests"

    def start(self, p: ImprovementProposal) -> None:
        """Announce ``p``'s apply (which ends any running watch) and watch it against the
        requests served since the last change before it.
        """
        cfg = self.engine.config
        metric, lower, why = self.watched_metric(p)
        recent = self.changes.recent(metric, cfg.watch_requests)
        watch = None
        if cfg.watch_requests == 0 or len(recent) < min(10, cfg.watch_requests):
            note = (f"watch skipped: only {len(recent)} {metric} observations since the last "
                    "change before the apply")
        else:
            baseline = sum(recent) / len(recent)
            watch = RegressionWatch(
                f"post-apply watch of proposal {p.id}", metric, lower, cfg.watch_requests,
                cfg.watch_regression_threshold, baseline, on_regress=functools.partial(self._concluded, p.id),
                on_pass=functools.partial(self._concluded, p.id), owner=self, subject=p.id)
            note = (f"watching {metric} ({why}) for {cfg.watch_requests} requests "
                    f"(baseline {baseline:.6g} over {len(recent)})")
        self.changes.changed("rsi", f"proposal {p.id} applied ({p.description})", watch=watch)
        self.engine.audit.append("watch_started", id=p.id, metric=metric, note=note)

    def watching(self) -> str | None:
        """Id of the proposal being watched, if the board's running watch is one of these."""
        w = self.changes.watching()
        return w.subject if w is not None and w.owner is self else None

    def _concluded(self, proposal_id: str, verdict: Verdict) -> None:
        """Called on the request path when a watch fills up: audit and act in a thread."""
        try:
            threading.Thread(target=self._act, args=(proposal_id, verdict), daemon=True,
                             name="vortex-rsi-watch").start()
        except Exception:  # e.g. no thread left: the request must still succeed
            log.exception("could not start the watch judgement of %s", proposal_id)

    def _act(self, proposal_id: str, v: Verdict) -> None:
        """Runs in its own thread: every failure is audited (or logged), never raised."""
        engine = self.engine
        try:
            detail = dict(id=proposal_id, **v.to_dict())
            if not v.regressed:
                engine.audit.append("watch_passed", **detail)
                return
            reason = (f"watch: {v.metric} regressed {v.regression:+.1%} (baseline {v.baseline:.6g}, "
                      f"after {v.after:.6g} over {v.requests} requests) beyond {v.threshold:.1%}")
            engine.audit.append("auto_rollback", reason=reason, **detail)
            try:
                engine.rollback_proposal(proposal_id, reason, by="watch")
            except Exception as exc:
                engine._background_failed("auto_rollback_failed", exc, **detail)
        except Exception as exc:
            engine._background_failed("watch_failed", exc, id=proposal_id)
