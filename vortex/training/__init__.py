"""Background training: sample buffer, FluxDynamics, DDP worker, model registry and hot swap.

Names are loaded lazily (PEP 562) so that ``import vortex.training`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "ModelRegistry": "vortex.training.registry",
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

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vortex.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
