"""Weakness rules: one module per kind, one table, everything else derived from it.

Each rule (a :class:`~vortex.monitor.rules.base.WeaknessRule`) declares its kind, its check
over the figures of one analysis pass, the per-request metric a fix of it is watched on after
an apply, and the proposer that addresses it. :data:`RULES` lists them in the order the
detector reports them; the RSI engine's watched-metric table (:func:`watched_metric`) and the
proposers' kinds (:func:`kinds_for`) are computed from it, so adding a weakness kind is: its
:class:`~vortex.monitor.weaknesses.WeaknessType` value, its module here, its line in
:data:`RULES` (and its threshold in ``RuntimeDetectorConfig``).
"""

from __future__ import annotations

from ..weaknesses import WeaknessType
from .base import Figures, WeaknessRule
from .confidence_drop import ConfidenceDrop
from .confidence_low import ConfidenceLow
from .latency_spike import LatencySpike
from .memory_pressure import MemoryPressure
from .prediction_error_spike import PredictionErrorSpike
from .recurring_pattern import RecurringPattern
from .throughput_drop import ThroughputDrop

__all__ = ["RULES", "Figures", "WeaknessRule", "kinds_for", "rule_for", "watched_metric"]

RULES: tuple[WeaknessRule, ...] = (
    LatencySpike(), ConfidenceDrop(), ConfidenceLow(), PredictionErrorSpike(),
    MemoryPressure(), ThroughputDrop(), RecurringPattern(),
)
"""Every weakness rule, in report order ("window", then "process", then "onsets" rules)."""

_BY_KIND = {rule.kind: rule for rule in RULES}
assert len(_BY_KIND) == len(RULES), "two rules for one weakness kind"


def rule_for(kind: WeaknessType | str) -> WeaknessRule:
    """The rule of a weakness kind (a member or its value); KeyError if none."""
    return _BY_KIND[WeaknessType(kind)]


def watched_metric(kind: WeaknessType | str) -> tuple[str, bool]:
    """``(metric, lower_is_better)`` that a fix of ``kind`` is watched on after its apply."""
    rule = rule_for(kind)
    return rule.watched_metric, rule.lower_is_better


def kinds_for(proposer: str) -> frozenset[WeaknessType]:
    """The weakness kinds whose rules name ``proposer`` as the one that addresses them."""
    return frozenset(rule.kind for rule in RULES if rule.proposer == proposer)
