"""Latency spike: too many of the recent requests took longer than the threshold."""

from __future__ import annotations

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType
from .base import Figures, WeaknessRule


class LatencySpike(WeaknessRule):
    """At least ``latency_spike_count`` of the recent requests over
    ``latency_spike_threshold_ms``; severity mixes how many and by how much.
    """

    kind = WeaknessType.LATENCY_SPIKE
    watched_metric, lower_is_better = "latency_ms", True
    proposer = "performance"

    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        st = figures.stats
        over = st.recent_over_threshold
        if over < config.latency_spike_count:
            return []
        thr = config.latency_spike_threshold_ms
        rn = st.recent_count
        severity = 0.5 * over / rn + 0.5 * (1.0 - thr / st.recent_over_latency_mean)
        return [self.weakness(
            figures, severity,
            f"{over} of the last {rn} requests took longer than {thr:g} ms "
            f"(recent mean {st.recent_latency_mean:.1f} ms, max "
            f"{st.recent_latency_max:.1f} ms)", st.recent_latency_mean, float(thr))]
