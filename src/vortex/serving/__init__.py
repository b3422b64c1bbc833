"""Serving a model from several worker processes with one control plane per home.

* :class:`ServiceSpec` (:mod:`.spec`): what every process of the service builds from.
* :class:`ServingWorker` (:mod:`.worker`): serves, records into its shared-memory segment,
  takes feedback for requests any worker answered; follows the registry and the tunables.
* :class:`ControlPlane`, :class:`ControlStandby`, :class:`ControlLock` (:mod:`.control`): the
  one process per home that runs the detector, RSI and training over every worker's data;
  ``vortex control`` runs it as a sidecar.
* :class:`Lease` (:mod:`.lease`), :class:`SpoolWriter`, :class:`SpoolMerger` (:mod:`.replica`):
  replicas on several machines (``ServiceSpec.fleet_url``): one control plane per fleet, the
  other machines' samples spooled to it (docs/DISTRIBUTED.md).
* :class:`VortexService` (:mod:`.service`): one process's worker and standby.
* :class:`VortexMiddleware`, :func:`vortex_app`, :func:`lifespan` (:mod:`.asgi`): the ASGI
  integration. docs/SERVING.md explains the whole.

Names are resolved lazily: importing this package loads neither NumPy nor Starlette.
"""

from __future__ import annotations

from typing import Any

from .._lazy import resolve

_LAZY: dict[str, str] = {
    "ServiceSpec": "vortex.serving.spec",
    "load_spec": "vortex.serving.spec",
    "ServingWorker": "vortex.serving.worker",
    "current_request": "vortex.serving.worker",
    "ControlPlane": "vortex.serving.control",
    "ControlStandby": "vortex.serving.control",
    "ControlLock": "vortex.serving.control",
    "run_control": "vortex.serving.control",
    "want_status": "vortex.serving.control",
    "Lease": "vortex.serving.lease",
    "SpoolWriter": "vortex.serving.replica",
    "SpoolMerger": "vortex.serving.replica",
    "VortexService": "vortex.serving.service",
    "VortexMiddleware": "vortex.serving.asgi",
    "vortex_app": "vortex.serving.asgi",
    "lifespan": "vortex.serving.asgi",
    "fleet_exposition": "vortex.serving.metrics",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    return resolve(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return sorted(__all__)
