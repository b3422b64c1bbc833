"""Background training: the sample ring, flux weighting, the data pipeline, the DDP trainer
worker, the model registry, the model slot and the coordinator.

Importing this package is light; each public name loads its module (and NumPy, torch,
pyarrow, Numba as needed) on first use.
"""

from __future__ import annotations

from typing import Any

from .._lazy import resolve

# public name -> module that defines it; resolved on first attribute access (PEP 562)
_LAZY: dict[str, str] = {
    "SampleBuffer": "vortex.training.buffer",
    "Snapshot": "vortex.training.buffer",
    "FluxDynamics": "vortex.training.flux",
    "FluxWeights": "vortex.training.flux",
    "TrainingPipeline": "vortex.training.pipeline",
    "PipelineData": "vortex.training.pipeline",
    "weighted_loss": "vortex.training.pipeline",
    "ModelRegistry": "vortex.training.registry",
    "VersionMeta": "vortex.training.registry",
    "VersionStatus": "vortex.training.statuses",
    "RunStatus": "vortex.training.statuses",
    "ModelSlot": "vortex.training.slot",
    "SlotEntry": "vortex.training.slot",
    "BackgroundTrainingCoordinator": "vortex.training.coordinator",
    "TrainingTrigger": "vortex.training.coordinator",
    "TrainingRun": "vortex.training.coordinator",
    "TrainingStats": "vortex.training.coordinator",
    "ValidationResult": "vortex.training.validation",
    "compare_models": "vortex.training.validation",
    "mlp": "vortex.training.models",
}

__all__ = [*_LAZY]  # noqa: PLE0604 - the lazily imported names (keys of _LAZY)


def __getattr__(name: str) -> Any:
    return resolve(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return sorted(__all__)
