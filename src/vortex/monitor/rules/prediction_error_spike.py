"""Prediction-error spike: the recent requests with ground truth erred too much."""

from __future__ import annotations

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType
from .base import Figures, WeaknessRule


class PredictionErrorSpike(WeaknessRule):
    """Mean error of the newest requests with ground truth above
    ``prediction_error_spike_threshold``; severity ``1 - threshold / error``.
    """

    kind = WeaknessType.PREDICTION_ERROR_SPIKE
    watched_metric, lower_is_better = "error", True
    proposer = "error_handling"

    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        st = figures.stats
        if not st.recent_error_count:
            return []
        err, thr = st.recent_error_mean, config.prediction_error_spike_threshold
        if err <= thr:
            return []
        return [self.weakness(
            figures, 1.0 - thr / err,
            f"mean prediction error of the {st.recent_error_count} most recent requests with "
            f"ground truth is {err:.3f}, above {thr:g}", err, float(thr))]
