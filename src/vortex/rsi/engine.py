"""The self-modification engine: weaknesses → proposals → sandbox → apply or queue → watch.

State under ``<home>/rsi``: ``proposals/`` (one JSON per proposal), ``audit.jsonl`` (hash-chained),
``journal/`` and ``applied/`` (see :mod:`vortex.rsi.apply`), ``memory.json`` (directions that
failed). A new engine over the same home replays a crashed apply's journal first, then sees
every proposal with its status.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..config import RSIConfig
from ..errors import ConfigError, PatchError, ProposalStateError, RSIError, SandboxError
from ..monitor.weaknesses import RSITriggerEvent, Weakness, WeaknessType
from ..tunables import Tunables
from .apply import Applier
from .audit import AuditLog
from .proposal import ImprovementProposal, ProposalStatus, ProposalStore, RiskLevel
from .proposers import OutcomeMemory, Proposer, ProposerContext, default_proposers
from .risk import assess_risk
from .sandbox import Sandbox, TestResult
from .settings import VortexSettings, load_settings

__all__ = ["RSIEngine", "RSICycleResult", "weaknesses_from_metrics", "WATCHED_METRIC"]

log = logging.getLogger(__name__)

# per weakness kind: the per-request metric watched after an apply, and whether lower is better
WATCHED_METRIC: dict[str, tuple[str, bool]] = {
    WeaknessType.LATENCY_SPIKE.value: ("latency_ms", True),
    WeaknessType.THROUGHPUT_DROP.value: ("latency_ms", True),
    WeaknessType.MEMORY_PRESSURE.value: ("latency_ms", True),
    WeaknessType.RECURRING_PATTERN.value: ("latency_ms", True),
    WeaknessType.CONFIDENCE_LOW.value: ("confidence", False),
    WeaknessType.CONFIDENCE_DROP.value: ("confidence", False),
    WeaknessType.PREDICTION_ERROR_SPIKE.value: ("error", True),
}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
        return None
    return float(x)


def weaknesses_from_metrics(summary: dict[str, Any], config: RSIConfig,
                            now: float | None = None) -> tuple[int, list[Weakness]]:
    """Total inferences and the weaknesses a tracker summary shows against ``config``.

    ``summary`` follows ``PerformanceTracker.summary()``: ``{"total_inferences" (or "total"):
    int, "modes": {mode: {"count", "mean_latency_ms", "mean_confidence", ...}}, "error_rate":
    float | None}``; without ``error_rate``, ``1 - success_rate`` (share of outcomes that were
    right) is used. Missing or None figures are skipped (no ground truth yet: no error rate).

    * a mode whose mean confidence is below ``min_confidence_threshold`` → confidence_low,
      severity = shortfall / threshold (the worst mode is kept);
    * ``"thorough"`` mean latency above ``max_thorough_time_ms`` → latency_spike,
      severity = min(1, excess / limit);
    * error rate above ``max_error_rate`` → prediction_error_spike,
      severity = min(1, excess / (1 - limit)).
    """
    now = time.time() if now is None else now
    total = int(_num(summary.get("total", summary.get("total_inferences", 0))) or 0)
    modes = summary.get("modes") or {}
    found: dict[WeaknessType, Weakness] = {}
    for mode, m in modes.items():
        conf = _num((m or {}).get("mean_confidence"))
        thr = config.min_confidence_threshold
        if conf is not None and conf < thr:
            w = Weakness(WeaknessType.CONFIDENCE_LOW, min(1.0, (thr - conf) / thr),
                         f"mode {mode!r}: mean confidence {conf:.3f} below {thr:.3f}", now, conf,
                         thr, total)
            if WeaknessType.CONFIDENCE_LOW not in found or w.severity > found[WeaknessType.CONFIDENCE_LOW].severity:
                found[WeaknessType.CONFIDENCE_LOW] = w
    lat = _num((modes.get("thorough") or {}).get("mean_latency_ms"))
    if lat is not None and lat > config.max_thorough_time_ms:
        lim = config.max_thorough_time_ms
        found[WeaknessType.LATENCY_SPIKE] = Weakness(
            WeaknessType.LATENCY_SPIKE, min(1.0, (lat - lim) / lim),
            f"thorough mode mean latency {lat:.3f} ms above {lim:.3f} ms", now, lat, lim, total)
    err = _num(summary.get("error_rate"))
    if err is None and _num(summary.get("success_rate")) is not None:
        err = 1.0 - float(summary["success_rate"])
    if err is not None and err > config.max_error_rate:
        lim = config.max_error_rate
        found[WeaknessType.PREDICTION_ERROR_SPIKE] = Weakness(
            WeaknessType.PREDICTION_ERROR_SPIKE, min(1.0, (err - lim) / max(1e-12, 1 - lim)),
            f"error rate {err:.3f} above {lim:.3f}", now, err, lim, total)
    return total, list(found.values())


@dataclass
class RSICycleResult:
    """What one :meth:`RSIEngine.rsi_cycle` did."""

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
    proposal_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Watch:
    proposal_id: str
    metric: str
    lower_is_better: bool
    baseline: float
    values: list[float] = field(default_factory=list)


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
    metrics
        Callable returning a tracker summary (see :func:`weaknesses_from_metrics`); without it,
        cycles act only on weaknesses handed in (triggers).
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
    """

    def __init__(self, root: str | os.PathLike[str], home: str | os.PathLike[str],
                 config: RSIConfig | None = None, *,
                 metrics: Callable[[], dict[str, Any]] | None = None,
                 calibration_data: Callable[[], Any] | None = None,
                 on_applied: Callable[[ImprovementProposal], None] | None = None,
                 proposers: Sequence[Proposer] | None = None,
                 tunables: Iterable[Tunables] = (),
                 sandbox_dir: str | None = None) -> None:
        if config is not None and not isinstance(config, RSIConfig):
            raise ConfigError(f"RSIEngine(config={config!r}): must be an RSIConfig")
        self.config = config if config is not None else RSIConfig()
        self.settings: VortexSettings = load_settings(root)
        self.home = os.fspath(home)
        state = os.path.join(self.home, "rsi")
        os.makedirs(state, exist_ok=True)
        self.store = ProposalStore(self.home)
        self.audit = AuditLog(os.path.join(state, "audit.jsonl"))
        self.applier = Applier(self.settings.root, state)
        self.memory = OutcomeMemory(os.path.join(state, "memory.json"))
        self.sandbox = Sandbox(self.settings, base_dir=sandbox_dir)
        self.metrics = metrics
        self.calibration_data = calibration_data
        self.on_applied = on_applied
        self.proposers = list(proposers) if proposers is not None else default_proposers(self.settings)
        self.tunables = list(tunables)
        self._lock = threading.RLock()
        self._watch: _Watch | None = None
        self._watch_lock = threading.Lock()
        self._recent: dict[str, deque[float]] = {
            m: deque(maxlen=max(1, self.config.watch_requests)) for m in ("latency_ms", "confidence", "error")}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trigger_thread: threading.Thread | None = None
        self._pending: list[Weakness] = []
        self.cycles = 0
        self.last_cycle: RSICycleResult | None = None
        self._recover()

    # ------------------------------------------------------------------ start-up
    def _recover(self) -> None:
        for item in self.applier.recover():
            self.audit.append("journal_replayed", entry=item)
        for p in self.store.list():
            if p.status == ProposalStatus.TESTING:
                self.store.transition(p, ProposalStatus.PROPOSED, "test interrupted by a restart")
            elif p.status == ProposalStatus.APPROVED and self.applier.is_applied(p.id):
                self.store.transition(p, ProposalStatus.APPLIED, "apply completed by journal replay")
            elif p.status == ProposalStatus.APPLIED and not self.applier.is_applied(p.id):
                self.store.transition(p, ProposalStatus.ROLLED_BACK, "rollback completed by journal replay")
        self.audit.append("engine_started", root=self.settings.root)

    # ------------------------------------------------------------------ proposals
    def propose(self, weakness: Weakness) -> ImprovementProposal | None:
        """Ask the proposers (in order) for a change addressing ``weakness``; save it.

        A proposer error is logged and the next proposer asked; RSIError if all failed."""
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
        """Run the sandbox test of a proposed proposal; it stays proposed when it passed and is
        rejected (its tunable moves remembered as failed) when it did not."""
        with self._lock:
            p = self.store.get(proposal_id)
            if p.status != ProposalStatus.PROPOSED:
                raise ProposalStateError(f"proposal {p.id} is {p.status.value}; only proposed ones are tested")
            self.store.transition(p, ProposalStatus.TESTING)
            try:
                res = self.sandbox.test(p.diff, metric=self.settings.metric_for(p.weakness_type),
                                        repeats=self.config.benchmark_repeats,
                                        confidence=self.config.confidence_level)
            except SandboxError as exc:
                res = TestResult(passed=False, errors=[f"sandbox error: {exc}"])
            p.test_result = res.to_dict()
            self.audit.append("proposal_tested", id=p.id, passed=res.passed,
                              tests_run=res.tests_run, tests_failed=res.tests_failed,
                              metric=res.metric, delta=res.performance_delta,
                              interval=res.delta_interval, errors=res.errors,
                              network_isolated=res.network_isolated)
            if res.passed:
                self.store.transition(p, ProposalStatus.PROPOSED, "sandbox test passed")
            else:
                self._reject(p, "sandbox test failed: " + "; ".join(res.errors), by="sandbox")
            return res

    def _reject(self, p: ImprovementProposal, reason: str, by: str) -> None:
        self.store.transition(p, ProposalStatus.REJECTED, reason)
        for m in p.moves:
            self.memory.block(p.weakness_type, m)
        self.audit.append("proposal_rejected", id=p.id, by=by, reason=reason)

    def reject_proposal(self, proposal_id: str, reason: str = "", *, by: str = "user") -> ImprovementProposal:
        """Reject a proposal that is not applied; its direction is not proposed again."""
        with self._lock:
            p = self.store.get(proposal_id)
            self._reject(p, reason or "rejected", by)
            return p

    def _auto_ok(self, risk: RiskLevel) -> bool:
        return (risk == RiskLevel.LOW and self.config.auto_apply_low_risk) or (
            risk == RiskLevel.MEDIUM and self.config.auto_apply_medium_risk)

    def approve_proposal(self, proposal_id: str, approver: str = "user") -> ImprovementProposal:
        """Approve and apply a proposal that passed its sandbox test (testing it first if it
        was never tested). Records the approver and the sha256 of the approved diff."""
        if not isinstance(approver, str) or not approver:
            raise ValueError(f"approver={approver!r} must name who approves")
        with self._lock:
            p = self.store.get(proposal_id)
            if p.status == ProposalStatus.PROPOSED and p.test_result is None:
                self.test_proposal(p.id)
            if p.status != ProposalStatus.PROPOSED or not (p.test_result or {}).get("passed"):
                raise ProposalStateError(
                    f"proposal {p.id} is {p.status.value}"
                    + ("" if p.status != ProposalStatus.PROPOSED else " without a passed sandbox test")
                    + "; only a proposal that passed can be approved")
            p.approver, p.approved_diff_sha256 = approver, p.diff_sha256
            self.store.transition(p, ProposalStatus.APPROVED, f"approved by {approver}")
            self.audit.append("proposal_approved", id=p.id, approver=approver,
                              diff_sha256=p.diff_sha256, risk=p.risk.value)
            self._apply(p)
            return p

    def _apply(self, p: ImprovementProposal) -> None:
        try:
            record = self.applier.apply(p.id, p.diff)
        except (PatchError, OSError) as exc:
            self._reject(p, f"apply failed: {exc}", by="engine")
            raise
        self._reload_tunables()
        self.store.transition(p, ProposalStatus.APPLIED, "applied")
        self.audit.append("proposal_applied", id=p.id, files=record["summary"])
        self._start_watch(p)
        if self.on_applied is not None:
            try:
                self.on_applied(p)
            except Exception as exc:  # the hook is the caller's code: report, never undo the apply
                log.exception("on_applied hook failed for %s", p.id)
                self.audit.append("on_applied_failed", id=p.id, error=repr(exc))

    def rollback_proposal(self, proposal_id: str, reason: str = "manual rollback", *,
                          by: str = "user") -> ImprovementProposal:
        """Restore the originals of an applied proposal.

        Raises
        ------
        RollbackConflictError
            A touched file changed since the apply; nothing is changed.
        """
        with self._lock:
            p = self.store.get(proposal_id)
            if p.status != ProposalStatus.APPLIED:
                raise ProposalStateError(f"proposal {p.id} is {p.status.value}; only applied ones roll back")
            files = self.applier.rollback(p.id)
            self._reload_tunables()
            self.store.transition(p, ProposalStatus.ROLLED_BACK, reason)
            for m in p.moves:
                self.memory.block(p.weakness_type, m)
            self.audit.append("proposal_rolled_back", id=p.id, by=by, reason=reason, files=files)
            with self._watch_lock:
                if self._watch is not None and self._watch.proposal_id == p.id:
                    self._watch = None
            return p

    def _reload_tunables(self) -> None:
        for t in self.tunables:
            t.reload()

    # ------------------------------------------------------------------ watch after apply
    def update_config(self, config: RSIConfig) -> None:
        """Use ``config`` from the next cycle on (the watch window keeps its current size)."""
        if not isinstance(config, RSIConfig):
            raise ValueError(f"config={config!r} must be an RSIConfig")
        with self._lock:
            self.config = config

    @property
    def needs_observations(self) -> bool:
        """Whether :meth:`observe` has any use: False while no watch runs and
        ``watch_requests`` is 0 (no post-apply watch, so no pre-apply baseline either); the
        request path then skips the call."""
        return self._watch is not None or self.config.watch_requests > 0

    def observe(self, *, latency_ms: float | None = None, confidence: float | None = None,
                error: float | None = None, correct: bool | None = None) -> None:
        """Feed one served request's figures (cheap; called on the request path or by the
        orchestrator). They form the pre-apply baseline and the post-apply watch. Without
        ``error``, ``correct`` gives it (0 when right, 1 when wrong)."""
        if error is None and correct is not None:
            error = 0.0 if correct else 1.0
        finished = None
        with self._watch_lock:
            for name, v in (("latency_ms", latency_ms), ("confidence", confidence), ("error", error)):
                if v is not None and v == v:
                    self._recent[name].append(float(v))
            w = self._watch
            if w is not None:
                v = {"latency_ms": latency_ms, "confidence": confidence, "error": error}[w.metric]
                if v is not None and v == v:
                    w.values.append(float(v))
                    if len(w.values) >= self.config.watch_requests:
                        finished, self._watch = w, None
        if finished is not None:
            threading.Thread(target=self._judge_watch, args=(finished,), daemon=True,
                             name="vortex-rsi-watch").start()

    def _start_watch(self, p: ImprovementProposal) -> None:
        metric, lower = WATCHED_METRIC.get(p.weakness_type, ("latency_ms", True))
        with self._watch_lock:
            recent = list(self._recent[metric])
            for d in self._recent.values():
                d.clear()
            if self.config.watch_requests == 0 or len(recent) < min(10, self.config.watch_requests):
                self._watch = None
                note = f"watch skipped: only {len(recent)} {metric} observations before the apply"
            else:
                self._watch = _Watch(p.id, metric, lower, sum(recent) / len(recent))
                note = f"watching {metric} for {self.config.watch_requests} requests (baseline {self._watch.baseline:.6g})"
        self.audit.append("watch_started", id=p.id, note=note)

    def watching(self) -> str | None:
        """Id of the proposal whose metric is being watched, if any."""
        w = self._watch
        return w.proposal_id if w else None

    def _judge_watch(self, w: _Watch) -> None:
        after = sum(w.values) / len(w.values)
        scale = abs(w.baseline) or 1e-12
        regression = ((after - w.baseline) if w.lower_is_better else (w.baseline - after)) / scale
        detail = dict(id=w.proposal_id, metric=w.metric, baseline=w.baseline, after=after,
                      regression=regression, threshold=self.config.watch_regression_threshold,
                      requests=len(w.values))
        if regression > self.config.watch_regression_threshold:
            reason = (f"watch: {w.metric} regressed {regression:+.1%} (baseline {w.baseline:.6g}, "
                      f"after {after:.6g} over {len(w.values)} requests) beyond "
                      f"{self.config.watch_regression_threshold:.1%}")
            self.audit.append("auto_rollback", reason=reason, **detail)
            try:
                self.rollback_proposal(w.proposal_id, reason, by="watch")
            except RSIError as exc:
                self.audit.append("auto_rollback_failed", error=str(exc), **detail)
        else:
            self.audit.append("watch_passed", **detail)

    # ------------------------------------------------------------------ cycles
    def detect(self) -> tuple[int, list[Weakness]]:
        """Total inferences and weaknesses from the ``metrics`` callable (0, [] without one)."""
        if self.metrics is None:
            return 0, []
        return weaknesses_from_metrics(self.metrics(), self.config)

    def rsi_cycle(self, weaknesses: Sequence[Weakness] | None = None) -> RSICycleResult:
        """One cycle: detect (plus ``weaknesses`` handed in), take the most severe
        ``max_weaknesses_per_cycle`` kinds, propose, test, apply or queue."""
        res = RSICycleResult(started_at=time.time())
        t0 = time.monotonic()
        with self._lock:
            try:
                if not self.config.enabled:
                    res.skipped_reason = "RSI disabled (RSIConfig.enabled=False)"
                    return res
                total, found = self.detect()
                if self.metrics is not None and total < self.config.min_inferences_before_rsi:
                    res.skipped_reason = (f"{total} inferences recorded, "
                                          f"{self.config.min_inferences_before_rsi} needed")
                    return res
                best: dict[WeaknessType, Weakness] = {}
                for w in [*found, *(weaknesses or ())]:
                    if w.type not in best or w.severity > best[w.type].severity:
                        best[w.type] = w
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

    def _handle(self, w: Weakness, res: RSICycleResult) -> None:
        try:
            p = self.propose(w)
        except RSIError as exc:
            res.errors.append(f"{w.type.value}: {exc}")
            return
        if p is None:
            res.errors.append(f"{w.type.value}: no proposer had an untried change")
            return
        res.proposals_created += 1
        res.proposal_ids.append(p.id)
        tr = self.test_proposal(p.id)
        res.tested += 1
        if not tr.passed:
            res.rejected += 1
            return
        res.passed += 1
        if self._auto_ok(p.risk):
            try:
                self.approve_proposal(p.id, approver=f"auto:{p.risk.value}")
                res.applied += 1
            except (RSIError, OSError) as exc:
                res.errors.append(f"{p.id}: apply failed: {exc}")
                res.rejected += 1
        else:
            res.queued += 1
            self.audit.append("proposal_queued", id=p.id, risk=p.risk.value,
                              reason="needs approve_proposal()")

    def on_trigger(self, event: RSITriggerEvent) -> None:
        """Detector subscription: runs a cycle on the event's weaknesses in a background
        thread (never blocks the detector); events arriving meanwhile are merged."""
        if not self.config.enabled:
            return
        with self._watch_lock:
            self._pending.extend(event.weaknesses)
            if self._trigger_thread is not None and self._trigger_thread.is_alive():
                return
            self._trigger_thread = threading.Thread(target=self._drain, daemon=True,
                                                    name="vortex-rsi-trigger")
            self._trigger_thread.start()

    def _drain(self) -> None:
        while True:
            with self._watch_lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._trigger_thread = None
                    return
            try:
                self.rsi_cycle(batch)
            except Exception:  # keep the worker alive; the audit log has the cycle
                log.exception("triggered RSI cycle failed")

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for triggered cycles to finish; False on timeout."""
        t = self._trigger_thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def start(self) -> None:
        """Start scheduled cycles every ``cycle_interval_secs``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vortex-rsi-cycle")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.cycle_interval_secs):
            try:
                self.rsi_cycle()
            except Exception:
                log.exception("scheduled RSI cycle failed")

    def stop(self, timeout: float | None = None) -> None:
        """Stop scheduled cycles (a running cycle finishes) and wait for triggered ones."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.wait_idle(timeout)

    # ------------------------------------------------------------------ status
    def list_proposals(self, status: ProposalStatus | None = None) -> list[ImprovementProposal]:
        return self.store.list(status)

    def stats(self) -> dict[str, Any]:
        """Proposal count (and per status), cycles, watch, isolation; JSON-ready."""
        counts = {s.value: 0 for s in ProposalStatus}
        for p in self.store.list():
            counts[p.status.value] += 1
        return {"enabled": self.config.enabled, "root": self.settings.root, "cycles": self.cycles,
                "proposals": sum(counts.values()), "proposals_by_status": counts,
                "watching": self.watching(),
                "last_cycle": self.last_cycle.to_dict() if self.last_cycle else None,
                "network_isolated": self.sandbox.network_isolated,
                "blocked_moves": [list(b) for b in self.memory.blocked()]}
