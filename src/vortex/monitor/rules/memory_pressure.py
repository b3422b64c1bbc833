"""Memory pressure: the process's resident memory is near its limit."""

from __future__ import annotations

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType
from .base import Figures, WeaknessRule


class MemoryPressure(WeaknessRule):
    """Resident memory over the limit above ``memory_pressure_threshold`` (never when it
    cannot be read); severity is the share of the remaining headroom used.
    """

    kind = WeaknessType.MEMORY_PRESSURE
    watched_metric, lower_is_better = "latency_ms", True
    proposer = "memory"
    stage = "process"

    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        memory, thr = figures.memory_fraction, config.memory_pressure_threshold
        if not memory > thr:  # NaN (unreadable) never fires
            return []
        return [self.weakness(
            figures, (memory - thr) / (1.0 - thr),
            f"resident memory is {memory:.2%} of the process's limit (threshold {thr:.2%})",
            memory, float(thr))]
