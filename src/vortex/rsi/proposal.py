"""Improvement proposals and their persistent store under ``<home>/rsi/proposals``."""

from __future__ import annotations

import enum
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ProposalNotFoundError, ProposalStateError
from ..monitor.weaknesses import Weakness
from .._io import atomic_write_json

__all__ = ["ProposalStatus", "RiskLevel", "TunableMove", "ImprovementProposal", "ProposalStore"]


class ProposalStatus(str, enum.Enum):
    """Life cycle: proposed → testing → (proposed, queued for approval | approved → applied |
    rejected | errored); applied → rolled_back; errored → testing again on a later cycle.

    ``errored`` is not a verdict: the judge could not run (no test runner, no git, the jail
    could not start, a timeout on a busy host). It blocks no move and is retried."""

    PROPOSED = "proposed"
    TESTING = "testing"
    APPROVED = "approved"
    APPLIED = "applied"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    ERRORED = "errored"


class RiskLevel(str, enum.Enum):
    """Risk computed from the diff (see :mod:`vortex.rsi.risk`)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return ("low", "medium", "high", "critical").index(self.value)


# allowed status transitions
_NEXT = {
    ProposalStatus.PROPOSED: {ProposalStatus.TESTING, ProposalStatus.APPROVED, ProposalStatus.REJECTED},
    ProposalStatus.TESTING: {ProposalStatus.PROPOSED, ProposalStatus.APPROVED, ProposalStatus.REJECTED,
                             ProposalStatus.ERRORED},
    ProposalStatus.APPROVED: {ProposalStatus.APPLIED, ProposalStatus.REJECTED},
    ProposalStatus.APPLIED: {ProposalStatus.ROLLED_BACK},
    ProposalStatus.REJECTED: set(),
    ProposalStatus.ROLLED_BACK: set(),
    ProposalStatus.ERRORED: {ProposalStatus.TESTING, ProposalStatus.REJECTED},
}


@dataclass(frozen=True)
class TunableMove:
    """A tunable change a proposal makes; proposers remember the direction of failed ones."""

    name: str
    old: Any
    new: Any
    direction: str  # increase | decrease | true | false | set


@dataclass
class ImprovementProposal:
    """One proposed change to the target tree.

    Attributes
    ----------
    id, description, proposer
        Identity and a sentence saying what the change does and why.
    weakness
        The weakness addressed.
    diff
        Unified diff against the target tree (never empty).
    expected_improvement
        Proposer's estimate, e.g. ``{"metric": "latency_ms", "relative": -0.3}``.
    risk, risk_reasons
        Computed from the diff.
    status, history
        Current status and every transition ``[time, status, note]``.
    test_result
        ``TestResult.to_dict()`` of the sandbox run, once tested.
    approver, approved_diff_sha256
        Who approved (``"auto:<risk>"`` for auto-apply) and the hash of the diff they approved.
    """

    id: str
    description: str
    weakness: Weakness
    diff: str
    proposer: str
    expected_improvement: dict[str, Any] = field(default_factory=dict)
    risk: RiskLevel = RiskLevel.HIGH
    risk_reasons: list[str] = field(default_factory=list)
    status: ProposalStatus = ProposalStatus.PROPOSED
    target: str = ""
    moves: list[TunableMove] = field(default_factory=list)
    test_result: dict[str, Any] | None = None
    approver: str | None = None
    approved_diff_sha256: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    history: list[list[Any]] = field(default_factory=list)

    @staticmethod
    def new_id() -> str:
        return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]

    @property
    def diff_sha256(self) -> str:
        return hashlib.sha256(self.diff.encode()).hexdigest()

    @property
    def weakness_type(self) -> str:
        return self.weakness.type.value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["weakness"] = self.weakness.to_dict()
        d["risk"] = self.risk.value
        d["status"] = self.status.value
        d["diff_sha256"] = self.diff_sha256
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImprovementProposal":
        d = dict(d)
        d.pop("diff_sha256", None)
        d["risk"] = RiskLevel(d["risk"])
        d["status"] = ProposalStatus(d["status"])
        d["moves"] = [TunableMove(**m) for m in d.get("moves", [])]
        d["weakness"] = Weakness.from_dict(d["weakness"])
        return cls(**d)


class ProposalStore:
    """Proposals as one JSON file each under ``<home>/rsi/proposals`` (atomic writes).

    Thread-safe; a new store over the same home sees every proposal saved before.
    """

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.dir = os.path.join(os.fspath(home), "rsi", "proposals")
        os.makedirs(self.dir, exist_ok=True)
        self._lock = threading.RLock()
        self._cache: dict[str, ImprovementProposal] = {}
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json") and not name.startswith("."):
                with open(os.path.join(self.dir, name), encoding="utf-8") as fh:
                    p = ImprovementProposal.from_dict(json.load(fh))
                self._cache[p.id] = p

    def save(self, p: ImprovementProposal) -> None:
        with self._lock:
            p.updated_at = time.time()
            atomic_write_json(os.path.join(self.dir, f"{p.id}.json"), p.to_dict())
            self._cache[p.id] = p

    def get(self, proposal_id: str) -> ImprovementProposal:
        with self._lock:
            try:
                return self._cache[proposal_id]
            except KeyError:
                raise ProposalNotFoundError(f"no proposal with id {proposal_id!r}") from None

    def list(self, status: ProposalStatus | None = None) -> list[ImprovementProposal]:
        with self._lock:
            ps = sorted(self._cache.values(), key=lambda p: (p.created_at, p.id))
        return [p for p in ps if status is None or p.status == status]

    def transition(self, p: ImprovementProposal, status: ProposalStatus, note: str = "") -> None:
        """Move ``p`` to ``status`` (checked against the life cycle) and persist it."""
        with self._lock:
            if status not in _NEXT[p.status]:
                raise ProposalStateError(
                    f"proposal {p.id} is {p.status.value}; cannot become {status.value}")
            p.status = status
            p.history.append([time.time(), status.value, note])
            self.save(p)
