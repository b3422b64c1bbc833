"""Recurring pattern: the same weakness keeps beginning at a regular interval."""

from __future__ import annotations

import itertools
import statistics

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType
from .base import Figures, WeaknessRule, clip01


class RecurringPattern(WeaknessRule):
    """A kind that began at least ``pattern_min_occurrences`` times in the last
    ``pattern_period_secs``, with a regularity (1 - coefficient of variation of the intervals
    between onsets) of at least ``pattern_confidence_threshold``; one weakness per such kind.
    """

    kind = WeaknessType.RECURRING_PATTERN
    watched_metric, lower_is_better = "latency_ms", True
    proposer = "performance"
    stage = "onsets"

    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        if not config.enable_pattern_recognition:
            return []
        out = []
        now = figures.now
        for kind in sorted(figures.new_onsets, key=lambda k: k.value):
            recent = [t for t in figures.onsets[kind] if now - t <= config.pattern_period_secs]
            if len(recent) < config.pattern_min_occurrences:
                continue
            intervals = [b - a for a, b in itertools.pairwise(recent)]
            mean = statistics.fmean(intervals)
            if mean <= 0.0:
                continue
            score = clip01(1.0 - statistics.pstdev(intervals) / mean)
            if score >= config.pattern_confidence_threshold:
                out.append(self.weakness(
                    figures, score,
                    f"{kind.value} began {len(recent)} times in the last "
                    f"{config.pattern_period_secs:g} s, every {mean:.1f} s on average "
                    f"(regularity {score:.2f})", float(len(recent)), mean))
        return out
