"""One process's part of a served model: :class:`VortexService`.

Every serving process runs a :class:`~vortex.serving.worker.ServingWorker`; unless told
otherwise it also stands by for the home's control plane
(:class:`~vortex.serving.control.ControlStandby`), so that when the process holding it dies,
a surviving worker takes over. A deployment with a ``vortex control`` sidecar may pass
``control="never"`` to keep the slow work out of the serving processes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .control import ControlStandby, check_nice, want_status
from .spec import ServiceSpec
from .worker import ServingWorker

__all__ = ["VortexService"]

_ROLES = ("standby", "never")


class VortexService:
    """The serving worker (and the control-plane standby) of this process.

    Create it at import time (it does nothing until :meth:`start`, which the ASGI lifespan
    calls in each worker process, after the fork).

    Parameters
    ----------
    spec
        The service.
    control
        ``"standby"`` (take the control plane when nobody holds it) or ``"never"``.
    follow_interval, standby_interval
        Seconds between two checks of the registry's active version (default: 0.1 for the
        home's registry, 1.0 for a shared one, see :class:`~vortex.serving.worker.ServingWorker`),
        and of the lock.
    control_nice
        Niceness added to the control plane's threads if this process takes the role
        (:class:`~vortex.serving.control.ControlStandby`; default 0).
    plane_kwargs
        Passed to :class:`~vortex.serving.control.ControlPlane`.
    """

    def __init__(self, spec: ServiceSpec, *, control: str = "standby", follow_interval: float | None = None,
                 standby_interval: float = 0.5, control_nice: int = 0, **plane_kwargs: Any) -> None:
        if control not in _ROLES:
            raise ValueError(f"control={control!r}: must be one of {_ROLES}")
        self.spec = spec
        self.control = control
        self.follow_interval = follow_interval
        self.standby_interval = standby_interval
        self.control_nice = check_nice(control_nice)
        self.plane_kwargs = plane_kwargs
        self.worker: ServingWorker | None = None
        self.standby: ControlStandby | None = None

    def start(self) -> None:
        """Start this process's worker and standby."""
        os.makedirs(self.spec.home, exist_ok=True)
        self.worker = ServingWorker(self.spec, follow_interval=self.follow_interval)
        self.worker.start()
        if self.control == "standby":
            self.standby = ControlStandby(self.spec, interval=self.standby_interval, nice=self.control_nice,
                                          **self.plane_kwargs)
            self.standby.start()

    def stop(self) -> None:
        """Stop the standby (and the control plane if this process holds it), then the worker."""
        if self.standby is not None:
            self.standby.stop()
            self.standby = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    @property
    def running(self) -> ServingWorker:
        """The started worker; RuntimeError before :meth:`start`."""
        if self.worker is None:
            raise RuntimeError("the Vortex service is not started (add its lifespan to the app)")
        return self.worker

    @property
    def holds_control(self) -> bool:
        """Whether this process runs the home's control plane."""
        return self.standby is not None and self.standby.plane is not None

    def control_status(self) -> dict[str, Any] | None:
        """The control plane's last published status (from whichever process holds it), or
        None before the first publication.
        """
        want_status(self.spec.home)
        try:
            with open(self.running.layout.control_status, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def status(self) -> dict[str, Any]:
        """The status of this worker, its role, and the control plane's published status."""
        role = self.standby.role if self.standby is not None else "standby"
        return {"role": "worker" if role == "standby" else f"worker+{role}",
                "worker": self.running.status(), "control": self.control_status()}
