"""Confidence drop: the recent mean confidence fell below the window's baseline."""

from __future__ import annotations

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType
from .base import Figures, WeaknessRule


class ConfidenceDrop(WeaknessRule):
    """Baseline mean confidence minus the recent one above ``confidence_drop_threshold``
    (judged once the window has a baseline); severity is the relative drop.
    """

    kind = WeaknessType.CONFIDENCE_DROP
    watched_metric, lower_is_better = "confidence", False
    proposer = "confidence"

    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        st = figures.stats
        if not st.baseline_count:
            return []
        base, recent = st.baseline_confidence_mean, st.recent_confidence_mean
        drop = base - recent
        if drop <= config.confidence_drop_threshold:
            return []
        return [self.weakness(
            figures, drop / base,
            f"mean confidence fell from {base:.3f} (baseline of {st.baseline_count} samples) "
            f"to {recent:.3f} over the last {st.recent_count} "
            f"(drop {drop:.3f} > {config.confidence_drop_threshold:g})", recent, base)]
