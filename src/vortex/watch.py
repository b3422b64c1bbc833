"""RegressionWatch: judges one change (an applied patch, a swapped model) by live requests.

A watch holds a baseline (the figure's mean over the requests served since the last change,
before this one), collects the same figure from the requests served after the change, and
once it has ``samples`` of them compares the two: a regression beyond ``threshold`` calls
``on_regress``, anything else ``on_pass``. The RSI engine watches an applied patch on the
figure its fix was tested on; background training watches a swapped model on its live error,
with its confidence as a ``guard`` that counts only when the error did not improve (the error
is the ground truth: a more accurate, less confident model is better calibrated, not worse).

Watches are started through :meth:`vortex.changes.ChangeBoard.changed`, which runs one at a
time and feeds it from the request path (:meth:`~vortex.changes.ChangeBoard.observe`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RegressionWatch", "Verdict", "worsening"]


def worsening(baseline: float, after: float, lower_is_better: bool, relative: bool) -> float:
    """How much worse ``after`` is than ``baseline`` (negative: better), as a share of the
    baseline when ``relative``, else in the figure's own unit.
    """
    delta = (after - baseline) if lower_is_better else (baseline - after)
    return delta / (abs(baseline) or 1e-12) if relative else delta


@dataclass(frozen=True)
class Verdict:
    """What a full watch found: the judged figure, its baseline and mean after the change, the
    worsening (see :func:`worsening`) and whether it is beyond the threshold.
    """

    metric: str
    baseline: float
    after: float
    regression: float
    threshold: float
    requests: int
    regressed: bool

    def to_dict(self) -> dict[str, Any]:
        """The figures (without ``regressed``) as a JSON-ready dict."""
        return {"metric": self.metric, "baseline": self.baseline, "after": self.after,
                "regression": self.regression, "threshold": self.threshold,
                "requests": self.requests}


@dataclass
class RegressionWatch:
    """One change watched on one live figure (see the module docstring).

    Parameters
    ----------
    description
        What is watched, for the record ("post-apply watch of proposal ab12").
    metric, lower_is_better
        The per-request figure judged ("latency_ms", "confidence", "error", "misclassified",
        "nll") and its direction.
    samples
        Requests after the change that complete the watch.
    threshold
        Largest worsening that passes (a share of the baseline when ``relative``).
    baseline
        The figure's mean before the change.
    on_regress, on_pass
        Called with the :class:`Verdict` once the watch is full (``on_pass`` may be None). They
        run on the thread that fed the last request: slow work belongs in a thread of its own.
    relative
        Whether ``threshold`` is a share of the baseline (else in the figure's unit).
    version
        Count only requests served by this model version (None: every request).
    guard
        ``(metric, lower_is_better, baseline)`` of a second figure, judged with the same
        threshold only when ``metric`` did not improve.
    owner, subject
        The component that started the watch and what it watches (a proposal id, a swap), for
        that component's own status and callbacks.
    """

    description: str
    metric: str
    lower_is_better: bool
    samples: int
    threshold: float
    baseline: float
    on_regress: Callable[[Verdict], Any]
    on_pass: Callable[[Verdict], Any] | None = None
    relative: bool = True
    version: int | None = None
    guard: tuple[str, bool, float] | None = None
    owner: object = None
    subject: Any = None
    values: list[float] = field(default_factory=list)
    guard_values: list[float] = field(default_factory=list)

    def add(self, version: int | None, figures: dict[str, float | None]) -> bool:
        """Count one request's ``figures`` (None or NaN: not measured); True once full."""
        if self.version is not None and version != self.version:
            return False
        if self.guard is not None:
            g = figures.get(self.guard[0])
            if g is not None and not math.isnan(g):
                self.guard_values.append(float(g))
        v = figures.get(self.metric)
        if v is None or math.isnan(v):
            return False
        self.values.append(float(v))
        return len(self.values) >= self.samples

    def progress(self) -> str:
        """``"<metric>, <observed> of <samples> requests"``."""
        return f"{self.metric}, {len(self.values)} of {self.samples} requests"

    def verdict(self) -> Verdict:
        """Judge the requests counted so far (at least one)."""
        after = sum(self.values) / len(self.values)
        worse = worsening(self.baseline, after, self.lower_is_better, self.relative)
        verdict = Verdict(self.metric, self.baseline, after, worse, self.threshold,
                          len(self.values), worse > self.threshold)
        if verdict.regressed or self.guard is None or worse < 0 or not self.guard_values:
            return verdict
        name, lower, base = self.guard
        g_after = sum(self.guard_values) / len(self.guard_values)
        g_worse = worsening(base, g_after, lower, self.relative)
        if not g_worse > self.threshold:  # NaN baseline (nothing measured before): no verdict
            return verdict
        return Verdict(name, base, g_after, g_worse, self.threshold, len(self.guard_values), True)
