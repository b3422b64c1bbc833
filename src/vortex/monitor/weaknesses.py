"""What the runtime detector reports: weaknesses and the trigger events built from them.

These types are shared by the detector (which raises them), the RSI engine (which turns
them into proposals) and the orchestrator (which reports them).
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RSITriggerEvent", "Weakness", "WeaknessType"]


class WeaknessType(str, enum.Enum):
    """Kinds of weakness the detector recognises (values are stable JSON names)."""

    LATENCY_SPIKE = "latency_spike"
    CONFIDENCE_DROP = "confidence_drop"
    CONFIDENCE_LOW = "confidence_low"
    PREDICTION_ERROR_SPIKE = "prediction_error_spike"
    MEMORY_PRESSURE = "memory_pressure"
    THROUGHPUT_DROP = "throughput_drop"
    RECURRING_PATTERN = "recurring_pattern"


@dataclass(frozen=True)
class Weakness:
    """One detected weakness.

    Attributes
    ----------
    type
        What kind of weakness.
    severity
        In [0, 1]; how far past its threshold the metric is (1 = as bad as it gets).
    description
        One human-readable sentence with the figures.
    detected_at
        Wall-clock time (``time.time()``) of detection.
    metric_value, baseline_value
        The offending recent figure and what it is compared with (threshold or baseline).
    samples_analyzed
        Number of samples in the window when it was detected.
    """

    type: WeaknessType
    severity: float
    description: str
    detected_at: float
    metric_value: float
    baseline_value: float
    samples_analyzed: int

    def to_dict(self) -> dict[str, Any]:
        """The weakness as a JSON-ready dict, ``type`` as its value (``"latency_spike"``)."""
        d = asdict(self)
        d["type"] = self.type.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Weakness:
        """The weakness :meth:`to_dict` gave ``d`` (as a stored proposal keeps it).

        Raises
        ------
        ValueError
            ``d["type"]`` names no :class:`WeaknessType`.
        KeyError, TypeError
            ``d`` lacks ``type`` or has missing or unknown fields; a proposal store reading
            a damaged file turns these into its corruption error.
        """
        return cls(**{**d, "type": WeaknessType(d["type"])})


@dataclass(frozen=True)
class RSITriggerEvent:
    """Delivered to subscribers when weaknesses are found and the cooldown has elapsed."""

    weaknesses: tuple[Weakness, ...]
    triggered_at: float = field(default_factory=time.time)

    @property
    def reason(self) -> str:
        """The kinds of weakness that triggered, sorted and comma-separated (each once)."""
        return ", ".join(sorted({w.type.value for w in self.weaknesses}))

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict: when, :attr:`reason`, and each weakness's dict."""
        return {"triggered_at": self.triggered_at, "reason": self.reason,
                "weaknesses": [w.to_dict() for w in self.weaknesses]}
