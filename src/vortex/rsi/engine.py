"""The self-modification engine: weaknesses → proposals → sandbox → apply or queue → watch.

State under ``<home>/rsi``: ``proposals/`` (one JSON per proposal), ``audit.jsonl`` (hash-chained)
and ``audit.head`` (its head), ``journal/`` and ``applied/`` (see :mod:`vortex.rsi.apply`),
``memory.json`` (directions that failed). A new engine over the same home recovers the audit
log's tail, replays a crashed apply's journal, and brings every proposal's status in line with
the tree (an interrupted apply is approvable again; a completed one is applied).

Concurrency: the slow part of a cycle (the sandbox test) holds no lock. Each status change is
a compare-and-set in the :class:`~vortex.rsi.proposal.ProposalStore`, shared with other
processes on the same home; approve → apply → applied and rollback run under the applier's
lock, so recovery never sees an apply in flight. Approving, rejecting and rolling back therefore
proceed while a cycle tests, and a change made by another process (the CLI) is seen at once.

Errors are not verdicts: a test whose judge could not run ends ``errored`` (cause recorded,
no move blocked) and is re-tested by a later cycle, at most ``max_test_attempts`` times with
doubling back-off; while it waits, no new proposal is made for its weakness (the proposer would
only propose the same move again). With no automatic attempt left it stays ``errored`` until a
person approves (re-tests) or rejects it.

Over 300 lines: the proposal state machine (start-up recovery, propose, test, approve and
apply, reject, roll back) and the cycle that drives proposals through it share the store, the
applier's lock and the audit trail. When cycles run is :mod:`vortex.rsi.scheduler`'s job, the
watch after an apply :mod:`vortex.rsi.post_apply`'s, weaknesses the detector's rules'.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .._io import owner_alive, owner_token, remove_orphan_temps
from ..changes import ChangeBoard
from ..config import RSIConfig
from ..errors import ConfigError, PatchError, ProposalStateError, RSIError, SandboxError, TreeChangedError
from ..home import HomeLayout
from ..monitor.rules import RULES
from ..monitor.weaknesses import RSITriggerEvent, Weakness, WeaknessType
from ..tunables import Tunables
from .apply import Applier
from .audit import AuditLog
from .post_apply import SERVED_METRIC, PostApplyWatch
from .proposal import ImprovementProposal, ProposalStatus, ProposalStore, RiskLevel
from .proposers import OutcomeMemory, Proposer, ProposerContext, default_proposers
from .risk import assess_risk
from .sandbox import Sandbox, TestResult
from .scheduler import CycleScheduler
from .settings import VortexSettings, load_settings
from .trees import tree_sha256

__all__ = ["SERVED_METRIC", "WATCHED_METRIC", "RSICycleResult", "RSIEngine", "WeaknessSource"]

log = logging.getLogger(__name__)

# per weakness kind: the per-request metric watched after an apply when the benchmark metric
# it was tested on is not one measured on served requests, and whether lower is better; each
# weakness rule declares its own (see vortex.monitor.rules)
WATCHED_METRIC: dict[str, tuple[str, bool]] = {
    rule.kind.value: (rule.watched_metric, rule.lower_is_better) for rule in RULES}

WeaknessSource = Callable[[], "tuple[int, Sequence[Weakness]]"]
"""What a scheduled cycle acts on: ``() -> (requests served so far, weaknesses now)``, the
weaknesses from the runtime detector's rules (:meth:`vortex.monitor.RuntimeDetector.assess`),
so that a cycle and a trigger judge by one set of thresholds."""

@dataclass
class RSICycleResult:
    """What one :meth:`RSIEngine.rsi_cycle` did (``errored``: tests whose judge could not run;
    ``retried``: errored proposals tested again).
    """

    started_at: float
    duration_secs: float = 0.0
    skipped_reason: str | None = None
    weaknesses: list[dict[str, Any]] = field(default_factory=list)
    proposals_created: int = 0
    tested: int = 0
    passed: int = 0
    applied: int = 0
    queued: int = 0
    rejected: int = 0
    errored: int = 0
    retried: int = 0
    proposal_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The cycle's figures as a JSON-ready dict (``stats()["last_cycle"]``)."""
        return asdict(self)


def _isolated(res: TestResult) -> bool:
    """Whether the test ran with adequate isolation (every command in the jail); without it
    nothing is auto-applied. The one place the engine reads the sandbox's isolation verdict.
    """
    return bool(res.isolated)


def _cause(res: TestResult | dict[str, Any] | None) -> str:
    """The errors of a test result (object or stored dict), in the runner's own words."""
    errors = res.errors if isinstance(res, TestResult) else (res or {}).get("errors")
    return "; ".join(errors or []) or "no cause recorded"


_TESTABLE = (ProposalStatus.PROPOSED, ProposalStatus.ERRORED)


class RSIEngine:
    """Self-modification of the source tree at ``root``.

    Parameters
    ----------
    root
        The target tree (its ``pyproject.toml`` has ``[tool.vortex]``).
    home
        Directory for all persistent state (see module docstring).
    config
        Thresholds and policies.
    weakness_source
        A :data:`WeaknessSource` (the orchestrator's :meth:`~vortex.Orchestrator.current_weaknesses`);
        without it, cycles act only on weaknesses handed in (triggers).
    calibration_data
        Callable returning buffered ``(logits, labels)`` for temperature fitting.
    on_applied
        Called with each applied proposal (e.g. to start an RSI-triggered training run).
    proposers
        Default: :func:`vortex.rsi.proposers.default_proposers`.
    tunables
        :class:`vortex.tunables.Tunables` objects of the running service, reloaded at once after
        an apply or rollback.
    sandbox_dir
        Base directory of sandbox trees.
    max_test_attempts
        Sandbox runs of one proposal that may end ``errored`` before cycles stop retrying it.
    retry_backoff_secs
        Wait before the first retry of an errored proposal; doubled after each further error.
    sandbox_python
        Interpreter of the sandbox's test and benchmark runs (default: the one running Vortex).
    changes
        The :class:`~vortex.changes.ChangeBoard` shared with the other components that change
        what serves (the orchestrator's, shared with background training): every apply and
        rollback is announced on it, and any change ends the running post-apply watch and
        restarts the pre-apply baseline. Default: one of its own, audited in this engine's log.
    """

    def __init__(self, root: str | os.PathLike[str], home: str | os.PathLike[str],
                 config: RSIConfig | None = None, *,
                 weakness_source: WeaknessSource | None = None,
                 calibration_data: Callable[[], Any] | None = None,
                 on_applied: Callable[[ImprovementProposal], None] | None = None,
                 proposers: Sequence[Proposer] | None = None,
                 tunables: Iterable[Tunables] = (),
                 sandbox_dir: str | None = None,
                 max_test_attempts: int = 3,
                 retry_backoff_secs: float = 60.0,
                 sandbox_python: str | None = None,
                 changes: ChangeBoard | None = None) -> None:
        if config is not None and not isinstance(config, RSIConfig):
            raise ConfigError(f"RSIEngine(config={config!r}): must be an RSIConfig")
        if isinstance(max_test_attempts, bool) or not isinstance(max_test_attempts, int) or max_test_attempts < 1:
            raise ValueError(f"max_test_attempts={max_test_attempts!r} must be an integer >= 1")
        if isinstance(retry_backoff_secs, bool) or not isinstance(retry_backoff_secs, (int, float)) \
                or not 0 <= retry_backoff_secs < float("inf"):
            raise ValueError(f"retry_backoff_secs={retry_backoff_secs!r} must be a finite number >= 0")
        self.config = config if config is not None else RSIConfig()
        self.settings: VortexSettings = load_settings(root)
        self.home = os.fspath(home)
        layout = HomeLayout(self.home)
        os.makedirs(layout.rsi, exist_ok=True)
        self.audit = AuditLog(layout.audit, layout.audit_head)
        self.store = ProposalStore(self.home)
        self.applier = Applier(self.settings.root, self.home)
        self.memory = OutcomeMemory(layout.rsi_memory)
        self.sandbox = Sandbox(self.settings, base_dir=sandbox_dir, python=sandbox_python)
        self.weakness_source = weakness_source
        self.calibration_data = calibration_data
        self.on_applied = on_applied
        self.proposers = list(proposers) if proposers is not None else default_proposers(self.settings)
        self.tunables = list(tunables)
        self.max_test_attempts = max_test_attempts
        self.retry_backoff_secs = float(retry_backoff_secs)
        self._lock = threading.RLock()
        self._cycle_lock = threading.Lock()  # one cycle at a time; held across its tests
        self.changes = changes if changes is not None else ChangeBoard(audit=self.audit.append)
        self.watch = PostApplyWatch(self, self.changes)
        self.scheduler = CycleScheduler(self.rsi_cycle, lambda: self.config, self._background_failed)
        self.cycles = 0
        self.last_cycle: RSICycleResult | None = None
        self.recovered: list[str] = []  # what the start-up recovery did
        self._recover()

    # ------------------------------------------------------------------ start-up
    def _recover(self) -> None:
        # temp files of killed writes of the audit head, a torn tail or memory.json (writes
        # in flight, of live processes, are locked and kept)
        self.recovered.extend(f"temp file {n} removed" for n in remove_orphan_temps(self.applier.state_dir))
        for note in self.audit.recover():
            self.recovered.append(f"audit log: {note['kind']}: {note.get('detail', '')}")
        with self.applier.locked():  # no apply or rollback in flight, in any process
            outcomes = self.applier.recover()
            for item in outcomes:
                self.audit.append("journal_replayed", entry=item)
                self.recovered.append(f"journal {item}")
            for problem in self.applier.problems():
                self.audit.append("journal_corrupt", file=problem.path, problem=problem.problem,
                                  remedy=problem.remedy)
            applied = set(self.applier.applied_ids())
            for p in self.store.list():
                self._reconcile(p, applied, outcomes)
        for err in self.store.corrupt():
            self.audit.append("proposal_corrupt", file=err.path, problem=err.problem)
        self.audit.append("engine_started", root=self.settings.root, recovered=self.recovered)

    def _reconcile(self, p: ImprovementProposal, applied: set[str], outcomes: list[str]) -> None:
        """Bring ``p``'s status in line with the tree after a crash (applier lock held)."""
        def move(status: ProposalStatus, note: str, event: str, **changes: Any) -> None:
            self.store.transition(p, status, note, allowed_from={p.status}, changes=changes)
            self.audit.append(event, id=p.id, status=status.value, note=note)
            self.recovered.append(f"proposal {p.id}: {note}")

        if p.status == ProposalStatus.TESTING and not (p.testing_owner and owner_alive(p.testing_owner)):
            attempts = p.errored_attempts + 1
            move(ProposalStatus.ERRORED, "test interrupted: its process is gone; retried by a cycle",
                 "test_interrupted", testing_owner=None, errored_attempts=attempts,
                 retry_after=time.time() if attempts < self.max_test_attempts else None)
        elif p.status == ProposalStatus.APPROVED and p.id in applied:
            move(ProposalStatus.APPLIED, "apply completed by journal replay", "apply_completed")
        elif p.status == ProposalStatus.APPROVED and not self.applier.problems():
            # (while a damaged journal awaits a person, the tree's state is unknown: it stays approved)
            move(ProposalStatus.PROPOSED, "apply interrupted; the journal restored the tree; "
                 "approvable again", "apply_interrupted")
        elif p.status == ProposalStatus.APPLIED and p.id not in applied:
            move(ProposalStatus.ROLLED_BACK, "rollback completed by journal replay", "rollback_completed")
            for m in p.moves:
                self.memory.block(p.weakness_type, m)
        elif p.status == ProposalStatus.APPLIED and f"{p.id}:rollback:undone" in outcomes:
            self.audit.append("rollback_interrupted", id=p.id, status=p.status.value,
                              note="the journal restored the applied files; still applied")
            self.recovered.append(f"proposal {p.id}: rollback interrupted, still applied")

    # ------------------------------------------------------------------ proposals
    def propose(self, weakness: Weakness) -> ImprovementProposal | None:
        """Ask the proposers (in order) for a change addressing ``weakness``; save it.

        A proposer error is logged and the next proposer asked; RSIError if all failed.
        """
        ctx = ProposerContext(self.settings, self.memory, self.calibration_data)
        errors = []
        for proposer in self.proposers:
            if not proposer.handles(weakness):
                continue
            try:
                draft = proposer.propose(weakness, ctx)
            except (RSIError, OSError, ValueError) as exc:
                errors.append(f"{proposer.name}: {exc}")
                continue
            if draft is None:
                continue
            risk, reasons = assess_risk(draft.diff, self.settings)
            p = ImprovementProposal(
                id=ImprovementProposal.new_id(), description=draft.description,
                weakness=weakness, diff=draft.diff, proposer=draft.proposer,
                expected_improvement=draft.expected_improvement, risk=risk,
                risk_reasons=reasons, target=self.settings.root, moves=draft.moves)
            p.history.append([time.time(), p.status.value, "created"])
            self.store.save(p)
            self.audit.append("proposal_created", id=p.id, proposer=p.proposer, risk=risk.value,
                              weakness=weakness.type.value, diff_sha256=p.diff_sha256,
                              description=p.description)
            return p
        if errors:
            raise RSIError("; ".join(errors))
        return None

    def test_proposal(self, proposal_id: str) -> TestResult:
        """Run the sandbox test of a proposed (or errored) proposal. It stays proposed when it
        passed, is rejected (its tunable moves remembered as failed) when it failed, and ends
        ``errored`` (nothing remembered, retried later) when the judge could not run.

        No lock is held while the sandbox runs: approvals, rejections and rollbacks of other
        proposals proceed meanwhile.
        """
        p = self.store.get(proposal_id)
        self.store.transition(p, ProposalStatus.TESTING, "sandbox test started", allowed_from=_TESTABLE,
                              changes={"testing_owner": owner_token()})
        diff = p.diff
        failure: BaseException | None = None
        try:
            res = self.sandbox.test(diff, metric=self.settings.metric_for(p.weakness_type),
                                    repeats=self.config.benchmark_repeats,
                                    confidence=self.config.confidence_level)
        except SandboxError as exc:
            res = TestResult(passed=False, errored=True, errors=[f"the sandbox could not run: {exc}"])
        except Exception as exc:  # a judge that crashed is no verdict either; re-raised below
            res = TestResult(passed=False, errored=True, errors=[f"the sandbox failed: {exc!r}"])
            failure = exc
        if res.errored:
            res.passed = False
        self._record_test(p, res, hashlib.sha256(diff.encode()).hexdigest())
        if failure is not None:
            raise failure
        return res

    def _record_test(self, p: ImprovementProposal, res: TestResult, diff_sha256: str) -> None:
        changes: dict[str, Any] = {"test_result": res.to_dict(), "tested_diff_sha256": diff_sha256,
                                   "testing_owner": None}
        if res.errored:
            attempts = p.errored_attempts + 1
            retry = (time.time() + self.retry_backoff_secs * 2 ** (attempts - 1)
                     if attempts < self.max_test_attempts else None)
            changes.update(errored_attempts=attempts, retry_after=retry)
            status, note = ProposalStatus.ERRORED, f"the judge could not run: {_cause(res)}"
        elif res.passed:
            changes.update(errored_attempts=0, retry_after=None)
            status, note = ProposalStatus.PROPOSED, "sandbox test passed"
        else:
            status, note = ProposalStatus.REJECTED, "sandbox test failed: " + _cause(res)
        try:
            self.store.transition(p, status, note, allowed_from={ProposalStatus.TESTING}, changes=changes)
        except ProposalStateError:
            self.audit.append("test_result_discarded", id=p.id, status=p.status.value,
                              passed=res.passed, errored=res.errored)
            return
        self.audit.append("proposal_tested", id=p.id, passed=res.passed, errored=res.errored,
                          tests_run=res.tests_run, tests_failed=res.tests_failed,
                          metric=res.metric, delta=res.performance_delta,
                          interval=res.delta_interval, errors=res.errors,
                          isolated=res.isolated, tree_sha256=res.tree_sha256,
                          diff_sha256=diff_sha256)
        if status == ProposalStatus.ERRORED:
            self.audit.append("proposal_errored", id=p.id, cause=_cause(res), attempts=p.errored_attempts,
                              retry_after=p.retry_after)
        elif status == ProposalStatus.REJECTED:
            self._remember_failure(p)
            self.audit.append("proposal_rejected", id=p.id, by="sandbox", reason=note)

    def _remember_failure(self, p: ImprovementProposal) -> None:
        for m in p.moves:
            self.memory.block(p.weakness_type, m)

    def reject_proposal(self, proposal_id: str, reason: str = "", *, by: str = "user") -> ImprovementProposal:
        """Reject a proposal that is not approved or applied; its direction is not proposed again."""
        p = self.store.get(proposal_id)
        self.store.transition(p, ProposalStatus.REJECTED, reason or "rejected",
                              allowed_from=(*_TESTABLE, ProposalStatus.TESTING))
        self._remember_failure(p)
        self.audit.append("proposal_rejected", id=p.id, by=by, reason=reason or "rejected")
        return p

    def _auto_ok(self, risk: RiskLevel) -> bool:
        return (risk == RiskLevel.LOW and self.config.auto_apply_low_risk) or (
            risk == RiskLevel.MEDIUM and self.config.auto_apply_medium_risk)

    def approve_proposal(self, proposal_id: str, approver: str = "user") -> ImprovementProposal:
        """Approve and apply a proposal, exactly as tested.

        It is (re-)tested first when it was never tested, its judge errored, or the tree is no
        longer the one it was tested on (another proposal applied, a file edited); it is applied
        only if that test passes. Records the approver and the sha256 of the approved diff.

        Raises
        ------
        ProposalStateError
            It is being tested, is not proposed or errored, or did not pass its (re-)test.
        PatchError
            The apply was refused (the proposal is then rejected; nothing was written).
        """
        if not isinstance(approver, str) or not approver:
            raise ValueError(f"approver={approver!r} must name who approves")
        for _ in range(3):
            p = self.store.get(proposal_id)
            if p.status == ProposalStatus.TESTING:
                raise ProposalStateError(f"proposal {p.id} is being tested; approve it once its test has finished")
            if p.status not in _TESTABLE:
                raise ProposalStateError(f"proposal {p.id} is {p.status.value}; only a proposed or "
                                         "errored proposal can be approved")
            tested_tree = (p.test_result or {}).get("tree_sha256")
            if p.status == ProposalStatus.PROPOSED and p.passed and tested_tree == tree_sha256(self.applier.root):
                try:
                    return self._apply_approved(p, approver)
                except TreeChangedError:
                    continue  # changed between the check and the lock: test again
            if p.test_result is not None:
                why = ("its judge could not run" if p.status == ProposalStatus.ERRORED else
                       "the tree changed since it was tested" if p.passed else "it has no passed test")
                self.audit.append("proposal_retest", id=p.id, reason=why, approver=approver)
            res = self.test_proposal(p.id)
            if not res.passed:
                raise ProposalStateError(
                    f"proposal {p.id} {'could not be tested' if res.errored else 'failed its test'} "
                    f"on the current tree ({_cause(res)}); not applied")
        raise ProposalStateError(f"proposal {proposal_id}: the tree kept changing during its re-tests; not applied")

    def _apply_approved(self, p: ImprovementProposal, approver: str) -> ImprovementProposal:
        """Approved → applied under the applier's lock (see module docstring)."""
        with self.applier.locked():
            self.store.transition(p, ProposalStatus.APPROVED, f"approved by {approver}",
                                  allowed_from={ProposalStatus.PROPOSED},
                                  changes={"approver": approver, "approved_diff_sha256": p.diff_sha256})
            if not p.passed:  # another process re-tested it meanwhile, on this very diff
                self.store.transition(p, ProposalStatus.PROPOSED, "approval withdrawn: no passed test")
                raise ProposalStateError(f"proposal {p.id} has no passed test on its diff; not applied")
            self.audit.append("proposal_approved", id=p.id, approver=approver,
                              diff_sha256=p.diff_sha256, risk=p.risk.value)
            tested = p.test_result or {}
            try:
                record = self.applier.apply(p.id, p.diff, tested_files=tested.get("candidate_files") or None,
                                            tested_tree=tested.get("tree_sha256"))
            except TreeChangedError as exc:
                self.store.transition(p, ProposalStatus.PROPOSED, f"not applied: {exc}; re-testing")
                raise
            except PatchError as exc:  # refused before anything was written
                self.store.transition(p, ProposalStatus.REJECTED, f"apply refused: {exc}")
                self.audit.append("proposal_rejected", id=p.id, by="engine", reason=f"apply refused: {exc}")
                raise
            except BaseException as exc:  # disk, a damaged journal...: not the proposal's fault
                self._undo_failed_transaction()
                if not self.applier.is_applied(p.id):
                    self.store.transition(p, ProposalStatus.PROPOSED, f"apply failed ({exc!r}); "
                                          "the tree was restored; approvable again")
                    self.audit.append("apply_failed", id=p.id, error=repr(exc))
                    raise
                record = {"summary": f"completed by journal replay after {exc!r}"}
            self._reload_tunables()  # first: whoever sees "applied" sees the new values
            self.store.transition(p, ProposalStatus.APPLIED, "applied")
            self.audit.append("proposal_applied", id=p.id, files=record["summary"])
        self.watch.start(p)
        if self.on_applied is not None:
            try:
                self.on_applied(p)
            except Exception as exc:  # the hook is the caller's code: report, never undo the apply
                log.exception("on_applied hook failed for %s", p.id)
                self.audit.append("on_applied_failed", id=p.id, error=repr(exc))
        return p

    def _undo_failed_transaction(self) -> None:
        """Replay the journal a failed apply or rollback left (the applier lock is held)."""
        try:
            for item in self.applier.recover():
                self.audit.append("journal_replayed", entry=item)
        except Exception:  # the journal stays; the next start replays it
            log.exception("could not replay the journal of a failed apply now")

    def rollback_proposal(self, proposal_id: str, reason: str = "manual rollback", *,
                          by: str = "user") -> ImprovementProposal:
        """Restore the originals of an applied proposal; its direction is not proposed again.

        Raises
        ------
        RollbackConflictError
            A touched file changed since the apply; nothing is changed.
        AppliedRecordCorruptError
            Its applied record is damaged; nothing is changed.
        """
        with self.applier.locked():
            p = self.store.get(proposal_id)
            if p.status != ProposalStatus.APPLIED:
                raise ProposalStateError(f"proposal {p.id} is {p.status.value}; only applied ones roll back")
            try:
                files = self.applier.rollback(p.id)
            except RSIError:  # refused before anything was written
                raise
            except BaseException:
                self._undo_failed_transaction()
                if self.applier.is_applied(p.id):
                    raise
                files = ["(completed by journal replay)"]
            self._reload_tunables()
            self.store.transition(p, ProposalStatus.ROLLED_BACK, reason,
                                  allowed_from={ProposalStatus.APPLIED})
            self._remember_failure(p)
            self.audit.append("proposal_rolled_back", id=p.id, by=by, reason=reason, files=files)
        self.changes.changed("rsi", f"proposal {p.id} rolled back ({reason})")
        return p

    def _reload_tunables(self) -> None:
        for t in self.tunables:
            t.reload()

    # ------------------------------------------------------------------ config and the watch after apply
    def update_config(self, config: RSIConfig) -> None:
        """Use ``config`` from the next cycle and the next watch on (a running watch keeps its size)."""
        if not isinstance(config, RSIConfig):
            raise ValueError(f"config={config!r} must be an RSIConfig")
        with self._lock:
            self.config = config
        self.changes.keep(config.watch_requests)  # the baseline a watch of this size needs

    @property
    def needs_observations(self) -> bool:
        """Whether :meth:`observe` has any use (see :attr:`ChangeBoard.needs_observations`)."""
        return self.changes.needs_observations

    def observe(self, *, latency_ms: float | None = None, confidence: float | None = None,
                error: float | None = None, correct: bool | None = None,
                nll: float | None = None) -> None:
        """Feed one served request's figures to the change board (the pre-apply baseline and
        the post-apply watch): latency and confidence when answered; once its ground truth is
        known, ``error`` (1 - p(label), or any error in [0, 1]), ``correct`` (gives
        ``misclassified``, 0 or 1; and ``error`` when none is given) and ``nll``
        (-log p(label)). Never raises because of the watch: its judgement runs in a background
        thread whose failures are audited. (An orchestrator feeds its board directly.)
        """
        misclassified = None if correct is None else (0.0 if correct else 1.0)
        self.changes.observe(None, latency_ms=latency_ms, confidence=confidence,
                             error=misclassified if error is None else error,
                             misclassified=misclassified, nll=nll)

    def watched_metric(self, p: ImprovementProposal) -> tuple[str, bool, str]:
        """What the watch after ``p`` judges (see :mod:`vortex.rsi.post_apply`)."""
        return self.watch.watched_metric(p)

    def watching(self) -> str | None:
        """Id of the proposal whose metric is being watched, if any."""
        return self.watch.watching()

    def _background_failed(self, event: str, exc: BaseException, **detail: Any) -> None:
        """Log and audit (as ``event``) a failure of a background thread's work; never raises:
        the thread must live on, and nothing may reach the request path.
        """
        log.error("%s: %r", event, exc, exc_info=exc)
        try:
            self.audit.append(event, error=f"{type(exc).__name__}: {exc}", **detail)
        except Exception:
            log.exception("could not audit %s", event)

    # ------------------------------------------------------------------ cycles
    def detect(self) -> tuple[int, list[Weakness]]:
        """Requests served and the weaknesses the ``weakness_source`` sees now (0, [] without
        one).
        """
        if self.weakness_source is None:
            return 0, []
        total, found = self.weakness_source()
        return int(total), list(found)

    def rsi_cycle(self, weaknesses: Sequence[Weakness] | None = None) -> RSICycleResult:
        """One cycle: detect (the ``weakness_source``: the detector's rules over the newest
        window), add ``weaknesses`` handed in (each stands for its kind), take the most severe
        ``max_weaknesses_per_cycle`` kinds; for each, re-test its errored proposal when one is due, else propose; test;
        apply or queue.
        """
        res = RSICycleResult(started_at=time.time())
        t0 = time.monotonic()
        with self._cycle_lock:
            try:
                if not self.config.enabled:
                    res.skipped_reason = "RSI disabled (RSIConfig.enabled=False)"
                    return res
                total, found = self.detect()
                if self.weakness_source is not None and total < self.config.min_inferences_before_rsi:
                    res.skipped_reason = (f"{total} inferences recorded, "
                                          f"{self.config.min_inferences_before_rsi} needed")
                    return res
                # a weakness handed in (a detector trigger) carries the window that raised it:
                # it stands for its kind over one the source sees now
                best: dict[WeaknessType, Weakness] = {}
                for source in (found, weaknesses or ()):
                    most: dict[WeaknessType, Weakness] = {}
                    for w in source:
                        if w.type not in most or w.severity > most[w.type].severity:
                            most[w.type] = w
                    best.update(most)
                chosen = sorted(best.values(), key=lambda w: -w.severity)[:self.config.max_weaknesses_per_cycle]
                res.weaknesses = [w.to_dict() for w in chosen]
                for w in chosen:
                    self._handle(w, res)
                return res
            finally:
                res.duration_secs = time.monotonic() - t0
                self.cycles += 1
                self.last_cycle = res
                self.audit.append("cycle", **{k: v for k, v in res.to_dict().items() if k != "weaknesses"},
                                  weakness_types=[w["type"] for w in res.weaknesses])

    def _errored_for(self, kind: str) -> list[ImprovementProposal]:
        return [p for p in self.store.list(ProposalStatus.ERRORED) if p.weakness_type == kind]

    def _handle(self, w: Weakness, res: RSICycleResult) -> None:
        errored = self._errored_for(w.type.value)
        due = [p for p in errored if p.retry_after is not None and p.retry_after <= time.time()]
        if due:
            p = due[0]
            res.retried += 1
            self.audit.append("proposal_retry", id=p.id, attempt=p.errored_attempts + 1)
        elif errored:  # waiting for its retry, or out of retries: proposing would repeat its move
            p = errored[0]
            when = (f"retried after {time.strftime('%H:%M:%S', time.localtime(p.retry_after))}"
                    if p.retry_after is not None else
                    "no automatic retry left: approve it to re-test, or reject it")
            res.errors.append(f"{w.type.value}: proposal {p.id} errored {p.errored_attempts}x "
                              f"({_cause(p.test_result)}); {when}")
            return
        else:
            try:
                new = self.propose(w)
            except RSIError as exc:
                res.errors.append(f"{w.type.value}: {exc}")
                return
            if new is None:
                res.errors.append(f"{w.type.value}: no proposer had an untried change")
                return
            p = new
            res.proposals_created += 1
        res.proposal_ids.append(p.id)
        try:
            tr = self.test_proposal(p.id)
        except RSIError as exc:  # e.g. a person rejected or started testing it meanwhile
            res.errors.append(f"{p.id}: {exc}")
            return
        res.tested += 1
        if tr.errored:
            res.errored += 1
            res.errors.append(f"{p.id}: the judge could not run: {_cause(tr)}")
            return
        if not tr.passed:
            res.rejected += 1
            return
        res.passed += 1
        if self._auto_ok(p.risk) and _isolated(tr):
            wait = self.config.apply_waits_for_watch_secs
            if not self.changes.wait_for_other_watch("rsi", wait, self.scheduler.stopping):
                log.info("%s: the watch of another change still runs after %s s: applying, which "
                         "ends it unjudged", p.id, wait)
            try:
                self.approve_proposal(p.id, approver=f"auto:{p.risk.value}")
                res.applied += 1
            except (RSIError, OSError) as exc:
                res.errors.append(f"{p.id}: apply failed: {exc}")
                if self.store.get(p.id).status == ProposalStatus.REJECTED:
                    res.rejected += 1
        else:
            res.queued += 1
            reason = ("needs approve_proposal()" if not self._auto_ok(p.risk) else
                      "tested without adequate isolation: never auto-applied; needs approve_proposal()")
            self.audit.append("proposal_queued", id=p.id, risk=p.risk.value, reason=reason)

    def on_trigger(self, event: RSITriggerEvent) -> None:
        """Detector subscription: a cycle on the event's weaknesses, in the scheduler's trigger
        thread (never blocks the detector); events arriving meanwhile are merged.
        """
        self.scheduler.on_trigger(event)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for triggered cycles to finish; False on timeout."""
        return self.scheduler.wait_idle(timeout)

    def start(self) -> None:
        """Start scheduled cycles every ``cycle_interval_secs``."""
        self.scheduler.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop scheduled cycles (a running cycle finishes) and wait for triggered ones."""
        self.scheduler.stop(timeout)

    # ------------------------------------------------------------------ status
    def list_proposals(self, status: ProposalStatus | None = None) -> list[ImprovementProposal]:
        """Every readable proposal of the store, oldest first, optionally only those in
        ``status`` (damaged files are skipped: :meth:`stats` lists them).
        """
        return self.store.list(status)

    def stats(self) -> dict[str, Any]:
        """JSON-ready status: proposal counts (per status, ``errored`` included), cycles, watch,
        isolation (``isolated``; ``isolation`` says with what, or why not), blocked moves, and
        what needs a person.

        ``errored``: the most recent errored proposals (``id``, ``weakness``, ``attempts``,
        ``cause``, ``retry_after``: epoch seconds, None when no automatic retry is left);
        ``corrupt_proposals``: damaged proposal files; ``apply_blocked_by``: damaged journals
        set aside (applies are refused until a person clears them); ``recovered``: what the
        start-up recovery did.
        """
        ps = self.store.list()
        counts = {s.value: 0 for s in ProposalStatus}
        for p in ps:
            counts[p.status.value] += 1
        errored = sorted((p for p in ps if p.status == ProposalStatus.ERRORED),
                         key=lambda p: p.updated_at, reverse=True)[:10]
        return {"enabled": self.config.enabled, "root": self.settings.root, "cycles": self.cycles,
                "proposals": sum(counts.values()), "proposals_by_status": counts,
                "errored": [{"id": p.id, "weakness": p.weakness_type, "attempts": p.errored_attempts,
                             "cause": _cause(p.test_result), "retry_after": p.retry_after}
                            for p in errored],
                "corrupt_proposals": [str(e) for e in self.store.corrupt()],
                "apply_blocked_by": [str(e) for e in self.applier.problems()],
                "recovered": list(self.recovered),
                "watching": self.watching(),
                "last_cycle": self.last_cycle.to_dict() if self.last_cycle else None,
                "network_isolated": self.sandbox.network_isolated,
                "isolated": self.sandbox.isolated, "isolation": self.sandbox.isolation.describe(),
                "blocked_moves": [list(b) for b in self.memory.blocked()]}
