"""Improvement proposals and their persistent store under ``<home>/rsi/proposals``.

Each proposal is one JSON file sealed with the sha256 of its bytes (see
:func:`vortex._io.atomic_write_sealed_json`) that also records the sha256 of its diff and of the
diff that was tested, so a damaged file is reported
(:class:`~vortex.errors.ProposalCorruptError`) instead of tested, approved or applied. Several
processes may share a store (a service's engine and a ``vortex proposals approve`` from the
shell): reads notice files another process changed, and every status change is a
compare-and-set under a lock all writers hold.
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .._io import FileKey, FileLock, atomic_write_sealed_json, file_key, read_sealed_json, remove_orphan_temps
from ..errors import ProposalCorruptError, ProposalNotFoundError, ProposalStateError
from ..home import HomeLayout
from ..monitor.weaknesses import Weakness

__all__ = ["ImprovementProposal", "ProposalStatus", "ProposalStore", "RiskLevel", "TunableMove"]


class ProposalStatus(str, enum.Enum):
    """Life cycle: proposed → testing → (proposed, queued for approval | approved → applied |
    rejected | errored); applied → rolled_back; errored → testing again on a later cycle.

    ``errored`` is not a verdict: the judge could not run (no test runner, no git, the jail
    could not start, a timeout on a busy host). It blocks no move and is retried.
    ``approved → proposed`` is recovery's move when an apply was interrupted and its journal
    put the tree back: the proposal is approvable again, with its test result.
    """

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
        """Position from ``low`` (0) to ``critical`` (3): the order to compare levels by, as
        the values, being strings, sort alphabetically (``"critical" < "high"``).
        """
        return ("low", "medium", "high", "critical").index(self.value)


# allowed status transitions
_NEXT = {
    ProposalStatus.PROPOSED: {ProposalStatus.TESTING, ProposalStatus.APPROVED, ProposalStatus.REJECTED},
    ProposalStatus.TESTING: {ProposalStatus.PROPOSED, ProposalStatus.APPROVED, ProposalStatus.REJECTED,
                             ProposalStatus.ERRORED},
    ProposalStatus.APPROVED: {ProposalStatus.APPLIED, ProposalStatus.REJECTED, ProposalStatus.PROPOSED},
    ProposalStatus.APPLIED: {ProposalStatus.ROLLED_BACK},
    ProposalStatus.REJECTED: set(),
    ProposalStatus.ROLLED_BACK: set(),
    ProposalStatus.ERRORED: {ProposalStatus.TESTING, ProposalStatus.REJECTED},
}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
        ``TestResult.to_dict()`` of the last sandbox run; its ``tree_sha256`` names the tree
        it ran on (an approval on another tree re-tests first).
    tested_diff_sha256
        sha256 of the diff that test ran on: nothing else is ever approved or applied.
    approver, approved_diff_sha256
        Who approved (``"auto:<risk>"`` for auto-apply) and the hash of the diff they approved.
    errored_attempts, retry_after
        Sandbox runs in a row that ended ``errored`` (the judge could not run), and when a
        cycle may test it again (None: no automatic retry left; a person may approve or
        reject it).
    testing_owner
        :func:`vortex._io.owner_token` of the process running its test while ``testing``, so
        a restart resets only tests whose process died.
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
    tested_diff_sha256: str | None = None
    approver: str | None = None
    approved_diff_sha256: str | None = None
    errored_attempts: int = 0
    retry_after: float | None = None
    testing_owner: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    history: list[list[Any]] = field(default_factory=list)

    @staticmethod
    def new_id() -> str:
        """A fresh proposal id, ``<UTC yyyymmddHHMMSS>-<8 random hex digits>``: ids sort by
        creation time, and the random part tells apart two created in one second.
        """
        return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]

    @property
    def diff_sha256(self) -> str:
        """sha256 (hex) of :attr:`diff`, what tests, approvals and applies are bound to."""
        return _sha256(self.diff)

    @property
    def weakness_type(self) -> str:
        """The addressed weakness's kind as its JSON name (``"latency_spike"``)."""
        return self.weakness.type.value

    @property
    def passed(self) -> bool:
        """Whether the last sandbox test passed, on exactly this diff."""
        return bool((self.test_result or {}).get("passed")) and self.tested_diff_sha256 == self.diff_sha256

    def to_dict(self) -> dict[str, Any]:
        """The proposal as a JSON-ready dict (the stored record), with its
        :attr:`diff_sha256` so a reader can check the diff.
        """
        d = asdict(self)
        d["weakness"] = self.weakness.to_dict()
        d["risk"] = self.risk.value
        d["status"] = self.status.value
        d["diff_sha256"] = self.diff_sha256
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImprovementProposal:
        """The proposal :meth:`to_dict` gave ``d``; its ``diff_sha256`` is dropped unchecked
        (the store compares it with the diff when it loads a file).

        Raises
        ------
        KeyError, TypeError, ValueError, AttributeError
            ``d`` is not such a record (a missing field, an unknown status or risk...); the
            store reports a file that raises one as :class:`~vortex.errors.ProposalCorruptError`.
        """
        d = dict(d)
        d.pop("diff_sha256", None)
        d["risk"] = RiskLevel(d["risk"])
        d["status"] = ProposalStatus(d["status"])
        d["moves"] = [TunableMove(**m) for m in d.get("moves", [])]
        d["weakness"] = Weakness.from_dict(d["weakness"])
        return cls(**d)


_REMEDY = ("restore it from a backup, or delete it to drop the proposal (its history stays in "
           "audit.jsonl); the other proposals are unaffected")


def _load(path: str) -> ImprovementProposal:
    """The proposal stored at ``path``, verified; :class:`ProposalCorruptError` otherwise."""
    doc = read_sealed_json(path, ProposalCorruptError, remedy=_REMEDY)
    try:
        p = ImprovementProposal.from_dict(doc)
        recorded = doc["diff_sha256"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProposalCorruptError(path, f"is not a proposal record ({exc!r})", remedy=_REMEDY) from None
    if not isinstance(p.diff, str) or recorded != p.diff_sha256:
        raise ProposalCorruptError(path, "its diff does not match the diff's recorded sha256",
                                   remedy=_REMEDY)
    if p.tested_diff_sha256 is not None and p.tested_diff_sha256 != p.diff_sha256:
        raise ProposalCorruptError(path, "its diff is not the diff that was tested", remedy=_REMEDY)
    if os.path.basename(path) != f"{p.id}.json":
        raise ProposalCorruptError(path, f"holds proposal {p.id!r}, not the one its name says",
                                   remedy=_REMEDY)
    return p


class ProposalStore:
    """Proposals as one JSON file each under ``<home>/rsi/proposals`` (atomic, sealed).

    Thread-safe, and shared by every process working on the same home:

    * :meth:`get` and :meth:`list` re-read any file whose (inode, mtime, size) changed since it
      was last read (one ``stat`` per file), so a change made by another process is seen at the
      next access;
    * writes (:meth:`save`, :meth:`transition`) hold ``proposals/.lock``; a transition first
      compares the proposal's status with the file's (compare-and-set), so two processes can
      never both move one proposal out of the same state;
    * a damaged file is listed by :meth:`corrupt` and raised by :meth:`get` for its id; every
      other proposal stays readable.
    """

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.dir = HomeLayout(home).proposals
        os.makedirs(self.dir, exist_ok=True)
        self._write_lock = FileLock(os.path.join(self.dir, ".lock"))
        self._lock = threading.RLock()
        self._cache: dict[str, ImprovementProposal] = {}
        self._keys: dict[str, FileKey] = {}  # file name -> key when last read or written
        self._corrupt: dict[str, ProposalCorruptError] = {}  # file name -> why
        self.removed_temp_files = remove_orphan_temps(self.dir)
        self.refresh()

    def _path(self, proposal_id: str) -> str:
        return os.path.join(self.dir, f"{proposal_id}.json")

    def _read_if_changed(self, name: str) -> None:
        """Bring the cache entry of file ``name`` in line with the disk (caller holds _lock)."""
        path = os.path.join(self.dir, name)
        key = file_key(path)  # before reading: a change after it shows as a new key next time
        if self._keys.get(name) == key:
            return
        pid = name[:-len(".json")]
        try:
            fresh = _load(path)
        except FileNotFoundError:
            self._keys.pop(name, None)
            self._corrupt.pop(name, None)
            self._cache.pop(pid, None)
            return
        except ProposalCorruptError as exc:
            self._keys[name], self._corrupt[name] = key, exc
            self._cache.pop(pid, None)
            return
        self._keys[name] = key
        self._corrupt.pop(name, None)
        cached = self._cache.get(pid)
        if cached is None:
            self._cache[pid] = fresh
        else:  # keep the object callers hold: they see the new state too
            cached.__dict__.update(fresh.__dict__)

    def refresh(self) -> None:
        """Re-read every proposal file that changed on disk, drop deleted ones."""
        with self._lock:
            names = {n for n in os.listdir(self.dir) if n.endswith(".json") and not n.startswith(".")}
            for gone in set(self._keys) - names:
                self._keys.pop(gone)
                self._corrupt.pop(gone, None)
                self._cache.pop(gone[:-5], None)
            for name in sorted(names):
                self._read_if_changed(name)

    def save(self, p: ImprovementProposal) -> None:
        """Write ``p`` as it is (a new proposal, or fields changed without a transition)."""
        with self._lock, self._write_lock:
            self._write(p)

    def _write(self, p: ImprovementProposal) -> None:
        p.updated_at = time.time()
        path = self._path(p.id)
        atomic_write_sealed_json(path, p.to_dict())
        self._keys[os.path.basename(path)] = file_key(path)
        self._corrupt.pop(os.path.basename(path), None)
        self._cache[p.id] = p

    def get(self, proposal_id: str) -> ImprovementProposal:
        """The proposal ``proposal_id`` as it is on disk now.

        Raises
        ------
        ProposalNotFoundError
            No such proposal.
        ProposalCorruptError
            Its file is damaged.
        """
        if not isinstance(proposal_id, str) or not proposal_id or "/" in proposal_id or proposal_id.startswith("."):
            raise ProposalNotFoundError(f"no proposal with id {proposal_id!r}")
        name = f"{proposal_id}.json"
        with self._lock:
            self._read_if_changed(name)
            if name in self._corrupt:
                raise self._corrupt[name]
            try:
                return self._cache[proposal_id]
            except KeyError:
                raise ProposalNotFoundError(f"no proposal with id {proposal_id!r}") from None

    def list(self, status: ProposalStatus | None = None) -> list[ImprovementProposal]:
        """Every readable proposal (oldest first), optionally only those in ``status``."""
        with self._lock:
            self.refresh()
            ps = sorted(self._cache.values(), key=lambda p: (p.created_at, p.id))
        return [p for p in ps if status is None or p.status == status]

    def corrupt(self) -> builtins.list[ProposalCorruptError]:
        """The damaged proposal files (as their errors, each naming its file)."""
        with self._lock:
            self.refresh()
            return [self._corrupt[n] for n in sorted(self._corrupt)]

    def transition(self, p: ImprovementProposal, status: ProposalStatus, note: str = "", *,
                   allowed_from: Iterable[ProposalStatus] | None = None,
                   changes: dict[str, Any] | None = None) -> None:
        """Move ``p`` to ``status``, set the fields in ``changes``, and persist it: a
        compare-and-set against the file, under the lock every writer holds.

        ``p`` is first brought in line with its file (another process may have moved it);
        the move must then start from one of ``allowed_from`` (default: any state the life
        cycle allows it from). Pass changed fields in ``changes`` rather than setting them on
        ``p`` beforehand, so that a refused move leaves ``p`` exactly as the file is.

        Raises
        ------
        ProposalStateError
            The move is not allowed from the proposal's current status; nothing was written.
        ProposalCorruptError
            Its file is damaged.
        """
        with self._lock, self._write_lock:
            name = f"{p.id}.json"
            self._read_if_changed(name)
            if name in self._corrupt:
                raise self._corrupt[name]
            target = self._cache.get(p.id, p)  # the store's object, as the file is now
            try:
                if allowed_from is not None and target.status not in set(allowed_from):
                    raise ProposalStateError(f"proposal {p.id} is {target.status.value}; cannot "
                                             f"become {status.value} from that state")
                if status not in _NEXT[target.status]:
                    raise ProposalStateError(
                        f"proposal {p.id} is {target.status.value}; cannot become {status.value}")
                for k in changes or {}:
                    if k not in target.__dict__ or k in ("id", "status", "history"):
                        raise ValueError(f"changes key {k!r} is not a settable proposal field")
                target.__dict__.update(changes or {})
                target.status = status
                target.history.append([time.time(), status.value, note])
                self._write(target)
            finally:
                if target is not p:  # a copy read elsewhere follows the file too
                    p.__dict__.update(target.__dict__)
