"""The base of every weakness rule (see :mod:`vortex.monitor.rules`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import RuntimeDetectorConfig
from ..weaknesses import Weakness, WeaknessType

__all__ = ["Figures", "WeaknessRule", "clip01"]


def clip01(x: float) -> float:
    """``x`` clipped to [0, 1] (a severity)."""
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


@dataclass(frozen=True)
class Figures:
    """What one analysis pass knows, handed to every rule.

    Attributes
    ----------
    stats
        The metric window's statistics (``vortex._fast_metrics.Stats``: recent and baseline
        means, counts, the recent requests over the latency threshold), or None when the window
        holds fewer samples than an analysis needs.
    samples
        Samples in the window (every weakness reports it as ``samples_analyzed``).
    memory_fraction
        Resident memory over the process's limit (NaN when unreadable).
    rates
        Request rates of the monitor ticks, oldest first.
    wall
        Wall-clock time of the pass (``detected_at``).
    now
        Monotonic time of the pass (the detector's clock).
    found
        Weaknesses the rules before this one found in this pass (the recurring-pattern rule
        reads them).
    onsets
        Per weakness kind, the monotonic times it began (appeared after a pass without it).
    new_onsets
        The kinds that began in this pass.
    """

    stats: Any
    samples: int
    memory_fraction: float
    rates: Sequence[float]
    wall: float
    now: float
    found: Sequence[Weakness] = ()
    onsets: Mapping[WeaknessType, Sequence[float]] = field(default_factory=dict)
    new_onsets: Sequence[WeaknessType] = ()


class WeaknessRule(ABC):
    """One kind of weakness: its check, and what its fixes are judged by.

    A subclass sets the class attributes and implements :meth:`check`; listing it in
    :data:`vortex.monitor.rules.RULES` is all it takes for the detector to run it, the RSI
    engine to watch its fixes on ``watched_metric`` and the ``proposer`` to handle it.

    Attributes
    ----------
    kind
        The weakness kind it raises.
    watched_metric, lower_is_better
        The per-request figure the post-apply watch judges a fix of this weakness by (when the
        fix's benchmark metric is not one served requests measure): "latency_ms",
        "confidence" or "error".
    proposer
        Name of the built-in proposer that addresses it ("performance", "confidence",
        "error_handling", "memory").
    stage
        "window": runs only when the window holds enough samples (``Figures.stats`` is set);
        "process": every pass (process-level figures); "onsets": after the others, over the
        onsets of what they found.
    """

    kind: ClassVar[WeaknessType]
    watched_metric: ClassVar[str]
    lower_is_better: ClassVar[bool]
    proposer: ClassVar[str]
    stage: ClassVar[str] = "window"

    @abstractmethod
    def check(self, figures: Figures, config: RuntimeDetectorConfig) -> list[Weakness]:
        """The weaknesses of this kind the figures show under ``config`` (usually 0 or 1)."""

    def weakness(self, figures: Figures, severity: float, description: str, value: float,
                 baseline: float) -> Weakness:
        """A :class:`Weakness` of this rule's kind found in this pass."""
        return Weakness(self.kind, clip01(severity), description, figures.wall, value, baseline,
                        figures.samples)
