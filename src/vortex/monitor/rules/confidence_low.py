"""Confidence low: the recent mean confidence is below an absolute threshold."""

from __future__ import annotations

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType
from .base import Figures, WeaknessRule


class ConfidenceLow(WeaknessRule):
    """Recent mean confidence below ``confidence_low_threshold``; severity is the shortfall
    over the threshold.
    """

    kind = WeaknessType.CONFIDENCE_LOW
    watched_metric, lower_is_better = "confidence", False
    proposer = "confidence"

    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        st = figures.stats
        recent, thr = st.recent_confidence_mean, config.confidence_low_threshold
        if recent >= thr:
            return []
        return [self.weakness(
            figures, (thr - recent) / thr,
            f"mean confidence of the last {st.recent_count} requests is {recent:.3f}, below "
            f"{thr:g}", recent, float(thr))]
