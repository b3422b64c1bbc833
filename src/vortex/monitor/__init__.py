"""Runtime monitoring: the weakness detector, the performance tracker, Prometheus exposition.

Names are resolved lazily (PEP 562), so importing this package does not load the compiled core
or NumPy until a detector or tracker is used.
"""

from __future__ import annotations

from typing import Any

from .._lazy import resolve
from .weaknesses import RSITriggerEvent, Weakness, WeaknessType

_LAZY: dict[str, str] = {
    "RuntimeDetector": "vortex.monitor.detector",
    "DetectorStats": "vortex.monitor.detector",
    "PerformanceTracker": "vortex.monitor.tracker",
    "ProcessMemoryProbe": "vortex.monitor.memory",
    "VortexCollector": "vortex.monitor.prometheus",
}

__all__ = ["RSITriggerEvent", "Weakness", "WeaknessType", *_LAZY]  # noqa: PLE0604 - names (keys)


def __getattr__(name: str) -> Any:
    return resolve(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return sorted(__all__)
