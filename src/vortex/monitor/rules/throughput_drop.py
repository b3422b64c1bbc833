"""Throughput drop: the last tick's request rate fell below the earlier ticks' mean."""

from __future__ import annotations

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType
from .base import Figures, WeaknessRule

MIN_BASELINE_TICKS = 3
"""Earlier ticks needed before a drop can be judged."""


class ThroughputDrop(WeaknessRule):
    """``1 - last rate / mean of the earlier rates`` above ``throughput_drop_threshold``."""

    kind = WeaknessType.THROUGHPUT_DROP
    watched_metric, lower_is_better = "latency_ms", True
    proposer = "performance"
    stage = "process"

    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        rates = figures.rates
        if len(rates) <= MIN_BASELINE_TICKS:
            return []
        last = rates[-1]
        baseline = (sum(rates) - last) / (len(rates) - 1)
        if baseline <= 0.0:
            return []
        drop = 1.0 - last / baseline
        if drop <= config.throughput_drop_threshold:
            return []
        return [self.weakness(
            figures, drop,
            f"request rate fell to {last:.1f}/s from a baseline of {baseline:.1f}/s over "
            f"{len(rates) - 1} ticks ({drop:.0%} drop > {config.throughput_drop_threshold:.0%})",
            last, baseline)]
