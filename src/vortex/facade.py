"""The orchestrator's reporting and access API: what it knows as one value, and the
pass-throughs to its components under the seed system's names (``rsi_stats``,
``get_proposals``, ``swap_to_version``...).

:class:`ComponentAccess` is a base of :class:`~vortex.orchestrator.Orchestrator`; it only
reads the components the orchestrator attached (``tracker``, ``detector``, ``rsi``,
``trainer``, ``changes``) and never wires anything: wiring and the request path stay in
:mod:`vortex.orchestrator`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import degraded
from .config import as_dict
from .errors import VortexError

__all__ = ["ComponentAccess", "SystemStatus"]


@dataclass(frozen=True)
class SystemStatus:
    """Everything the orchestrator knows, as one value (see :meth:`to_json`).

    ``degraded`` lists the fallbacks this process took because its environment lacks
    something (component, fallback, cause; see :mod:`vortex.degraded`); ``changes`` the newest
    changes to what serves and the watches they ended (see :mod:`vortex.changes`).
    """

    timestamp: float
    home: str
    current_model_version: int | None
    performance: dict[str, Any]
    runtime: dict[str, Any] | None
    weaknesses: list[dict[str, Any]]
    rsi: dict[str, Any] | None
    proposals: list[dict[str, Any]]
    training: dict[str, Any] | None
    model_versions: list[dict[str, Any]]
    pending_feedback: int
    degraded: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The status as plain data (nested dicts and lists)."""
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        """The status as JSON (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), default=_json_default, **kwargs)


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _plain(value: Any) -> Any:
    """A stats object (dataclass with to_dict, or a dict) as plain JSON-ready data."""
    if value is None:
        return None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=_json_default))


class ComponentAccess:
    """Pass-throughs to the attached components and :meth:`system_status` (see the module
    docstring). A missing component raises :class:`~vortex.errors.VortexError` naming the
    ``with_...()`` call that attaches it.
    """

    tracker: Any
    detector: Any
    rsi: Any
    trainer: Any
    changes: Any
    home: Any
    task: str
    feature_dim: int
    _modes: dict[str, Any]
    _pending: Any
    _rsi_config: Any
    _slot: Any

    def rsi_cycle(self) -> Any:
        """Run one RSI cycle now (detect from the tracker, propose, test, apply or queue)."""
        self._require(self.rsi, "with_self_modification")
        return self.rsi.rsi_cycle()

    def get_metrics(self) -> dict[str, Any]:
        """The performance tracker's summary (per mode and flux position)."""
        return self.tracker.summary()

    def runtime_stats(self) -> Any:
        """The runtime detector's statistics."""
        return self._require(self.detector, "with_runtime_detector").stats()

    def get_runtime_weaknesses(self, n: int = 10) -> list[Any]:
        """The ``n`` most recent weaknesses the detector raised."""
        return self._require(self.detector, "with_runtime_detector").get_recent_weaknesses(n)

    def rsi_stats(self) -> Any:
        """The RSI engine's counts (cycles, proposals by status, applies, rollbacks)."""
        return self._require(self.rsi, "with_self_modification").stats()

    def get_proposals(self, status: Any = None) -> list[Any]:
        """The RSI proposals, all or those with ``status``."""
        return self._require(self.rsi, "with_self_modification").list_proposals(status)

    def approve_proposal(self, proposal_id: str, approver: str) -> Any:
        """Approve a queued proposal in ``approver``'s name (re-tested first when the tree changed)."""
        return self._require(self.rsi, "with_self_modification").approve_proposal(proposal_id,
                                                                                  approver=approver)

    def rollback_proposal(self, proposal_id: str, reason: str = "requested") -> Any:
        """Roll back an applied proposal, audited with ``reason``."""
        return self._require(self.rsi, "with_self_modification").rollback_proposal(proposal_id,
                                                                                   reason=reason)

    def trigger_training(self, reason: str | None = None) -> bool:
        """Ask for a training run now; False when one is already pending or running."""
        from .training import TrainingTrigger

        return self._require(self.trainer, "with_background_trainer").trigger_training(
            TrainingTrigger.MANUAL, reason=reason)

    def training_stats(self) -> Any:
        """The training coordinator's statistics."""
        return self._require(self.trainer, "with_background_trainer").stats()

    def get_model_versions(self) -> list[dict[str, Any]]:
        """Every model version in the registry, oldest first."""
        return self._require(self.trainer, "with_background_trainer").get_model_versions()

    def current_model_version(self) -> int | None:
        """The version serving now (None: the initial model, before any version)."""
        return self._slot.get()[0]

    def swap_to_version(self, version: int, reason: str = "manual") -> None:
        """Serve registry ``version`` from the next request on (a person's swap wins over a running training run)."""
        self._require(self.trainer, "with_background_trainer").swap_to_version(version, reason=reason)

    @staticmethod
    def _require(component: Any, how: str) -> Any:
        if component is None:
            raise VortexError(f"that component is not attached: call {how}() first")
        return component

    def system_status(self) -> SystemStatus:
        """Performance, runtime stats and weaknesses, RSI stats and proposals, training stats,
        model versions and the current model, as one :class:`SystemStatus`.
        """
        return SystemStatus(
            timestamp=time.time(),
            home=str(self.home),
            current_model_version=self.current_model_version(),
            performance=_plain(self.tracker.summary()),
            runtime=_plain(self.detector.stats()) if self.detector is not None else None,
            weaknesses=[w.to_dict() for w in self.detector.get_recent_weaknesses(50)]
            if self.detector is not None else [],
            rsi=_plain(self.rsi.stats()) if self.rsi is not None else None,
            proposals=[_plain(p) for p in self.rsi.list_proposals()] if self.rsi is not None else [],
            training=_plain(self.trainer.stats()) if self.trainer is not None else None,
            model_versions=_plain(self.trainer.get_model_versions()) if self.trainer is not None else [],
            pending_feedback=len(self._pending),
            degraded=[f.to_dict() for f in degraded.active()],
            changes=self.changes.history(),
            config={
                "task": self.task,
                "feature_dim": self.feature_dim,
                "modes": sorted(self._modes),
                "runtime_detector": as_dict(self.detector.config) if self.detector is not None else None,
                "rsi": as_dict(self._rsi_config),
                "training": as_dict(self.trainer.config) if self.trainer is not None else None,
            },
        )
