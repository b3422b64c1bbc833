"""Vortex: an ML inference service that watches itself, patches itself and keeps training.

``import vortex`` is light: the compiled core, NumPy, torch and pyarrow are loaded when a
name that needs them is first used.
"""

from __future__ import annotations

from typing import Any

from ._lazy import resolve
from .config import BackgroundTrainingConfig, FluxConfig, RSIConfig, RuntimeDetectorConfig
from .errors import ConfigError, VortexError

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access (PEP 562)
_LAZY: dict[str, str] = {
    "WeaknessType": "vortex.monitor.weaknesses",
    "Weakness": "vortex.monitor.weaknesses",
    "RSITriggerEvent": "vortex.monitor.weaknesses",
    "SampleBuffer": "vortex.training.buffer",
    "Snapshot": "vortex.training.buffer",
    "FluxDynamics": "vortex.training.flux",
    "FluxWeights": "vortex.training.flux",
    "TrainingPipeline": "vortex.training.pipeline",
    "RuntimeDetector": "vortex.monitor.detector",
    "DetectorStats": "vortex.monitor.detector",
    "PerformanceTracker": "vortex.monitor.tracker",
    "RSIEngine": "vortex.rsi",
    "RSICycleResult": "vortex.rsi",
    "ImprovementProposal": "vortex.rsi",
    "ProposalStatus": "vortex.rsi",
    "RiskLevel": "vortex.rsi",
    "TestResult": "vortex.rsi",
    "AuditLog": "vortex.rsi",
    "Tunables": "vortex.tunables",
    "BackgroundTrainingCoordinator": "vortex.training.coordinator",
    "TrainingTrigger": "vortex.training.coordinator",
    "ModelRegistry": "vortex.training.registry",
    "ModelSlot": "vortex.training.slot",
    "Orchestrator": "vortex.orchestrator",
    "Prediction": "vortex.orchestrator",
    "SystemStatus": "vortex.orchestrator",
}

__all__ = [  # noqa: PLE0604 - the lazily imported names are the keys of _LAZY
    "__version__",
    "BackgroundTrainingConfig",
    "ConfigError",
    "FluxConfig",
    "RSIConfig",
    "RuntimeDetectorConfig",
    "VortexError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    return resolve(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return sorted(__all__)
