"""RSI state for the fault suites: pristine directories and the loaders the harness runs.

Each ``make_*`` builds, under a directory, the real files Vortex writes for one file kind;
each ``load_*`` does what Vortex does with that file on start-up or use and returns what a user
could observe, raising the documented :class:`~vortex.errors.CorruptFileError` otherwise. A
loader also checks the promise that goes with detection: nothing was written from a damaged
file (an ``AssertionError`` there is a ``wrong_error`` verdict, i.e. a failure).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from vortex.monitor.weaknesses import Weakness, WeaknessType
from vortex.rsi.apply import Applier
from vortex.rsi.audit import RECOVERY_EVENT, AuditLog
from vortex.rsi.diffs import make_diff
from vortex.rsi.proposal import ImprovementProposal, ProposalStatus, ProposalStore, RiskLevel, TunableMove
from vortex.rsi.trees import tree_sha256

PROPOSAL_ID = "20260101000000-abcdef01"
AUDIT = "rsi/audit.jsonl"
AUDIT_HEAD = "rsi/audit.head"
JOURNAL = "state/rsi/journal/p1.apply.json"
APPLIED = "state/rsi/applied/p1.json"
PROPOSAL = f"home/rsi/proposals/{PROPOSAL_ID}.json"


def make_tree(root: str, files: int = 3, lines: int = 40) -> str:
    """A small tree of text files (``f<i>.txt``) plus a ``conf.toml`` of two tunables."""
    os.makedirs(os.path.join(root, "pkg"), exist_ok=True)
    for i in range(files):
        with open(os.path.join(root, "pkg" if i % 2 else "", f"f{i}.txt"), "w") as fh:
            fh.write("".join(f"line {j} of file {i}\n" for j in range(lines)))
    with open(os.path.join(root, "conf.toml"), "w") as fh:
        fh.write("# service settings\nworkers = 4\nstrict = true\n")
    return root


def tree_diff(root: str, files: int = 3) -> str:
    """A diff changing two lines of every text file and one tunable."""
    parts = []
    for i in range(files):
        rel = os.path.join("pkg" if i % 2 else "", f"f{i}.txt")
        with open(os.path.join(root, rel)) as fh:
            old = fh.read()
        parts.append(make_diff(rel, old, old.replace("line 3 ", "LINE 3 ").replace("line 30 ", "LINE 30 ")))
    with open(os.path.join(root, "conf.toml")) as fh:
        old = fh.read()
    parts.append(make_diff("conf.toml", old, old.replace("workers = 4", "workers = 8")))
    return "".join(parts)


def proposal(diff: str, pid: str = PROPOSAL_ID, target: str = "") -> ImprovementProposal:
    return ImprovementProposal(
        id=pid, description="workers 4 -> 8", diff=diff, proposer="test",
        weakness=Weakness(WeaknessType.LATENCY_SPIKE, 0.5, "slow", 1_767_225_600.0, 9.0, 5.0, 60),
        risk=RiskLevel.LOW, target=target, moves=[TunableMove("workers", 4, 8, "increase")],
        created_at=1_767_225_600.0)


# ----------------------------------------------------------------------------- pristine dirs

def make_audit(directory: str) -> None:
    log = AuditLog(os.path.join(directory, AUDIT))
    for i in range(12):
        log.append("event", i=i, note="x" * (40 * i), nested={"a": [1, 2.5, None, True]})


def make_journal(directory: str) -> None:
    """A tree mid-apply: the journal is durable and one file was replaced when the process died."""
    root = make_tree(os.path.join(directory, "tree"))
    ap = Applier(root, os.path.join(directory, "state"))
    new = ap.compute(tree_diff(root))
    files = []
    for rel, after in sorted(new.items()):
        with open(os.path.join(root, rel), "rb") as fh:
            files.append({"path": rel, "before": fh.read(), "after": after, "mode": 0o644})
    ap._save_journal(os.path.join(directory, JOURNAL), {
        "id": "p1", "op": "apply", "state": "pending", "files": files,
        "record": {"id": "p1", "files": files, "summary": {}}})
    ap._write_files(files[:1], "after")


def make_applied(directory: str) -> None:
    root = make_tree(os.path.join(directory, "tree"))
    Applier(root, os.path.join(directory, "state")).apply("p1", tree_diff(root))


def make_proposal(directory: str) -> None:
    """A queued proposal: tested, passed, waiting for approval."""
    root = make_tree(os.path.join(directory, "tree"))
    store = ProposalStore(os.path.join(directory, "home"))
    p = proposal(tree_diff(root), target=root)
    store.save(p)
    store.transition(p, ProposalStatus.TESTING)
    store.transition(p, ProposalStatus.PROPOSED, "sandbox test passed", changes={
        "tested_diff_sha256": p.diff_sha256,
        "test_result": {"passed": True, "tests_run": 7, "tree_sha256": tree_sha256(root),
                        "candidate_files": {}, "errors": [], "performance_delta": 0.25}})


# ----------------------------------------------------------------------------- loaders

def load_audit(directory: str) -> dict[str, Any]:
    """What an engine start does with the log: recover its tail, then it must verify."""
    log = AuditLog(os.path.join(directory, AUDIT))
    log.recover()
    log.check()
    entries = log.entries()
    return {"events": [[e["event"], e["data"]] for e in entries if e["event"] != RECOVERY_EVENT],
            "recoveries": sorted(e["data"]["kind"] for e in entries if e["event"] == RECOVERY_EVENT)}


def audit_recovered(got: dict[str, Any], pristine: dict[str, Any]) -> bool:
    """Documented recovery: every entry kept, and only a lost final newline restored."""
    return got["events"] == pristine["events"] and set(got["recoveries"]) == {"newline_restored"}


def _digest(directory: str) -> str:
    return tree_sha256(os.path.join(directory, "tree"))


def load_journal(directory: str) -> dict[str, Any]:
    """Start-up replay of the journal: the tree goes back to its original bytes, or (damaged
    journal) nothing is written, the journal is set aside and named."""
    ap = Applier(os.path.join(directory, "tree"), os.path.join(directory, "state"))
    before = _digest(directory)
    outcomes = ap.recover()
    problems = ap.problems()
    if problems:
        assert _digest(directory) == before, "recovery wrote into the tree from a damaged journal"
        raise problems[0]
    return {"outcomes": outcomes, "tree": _digest(directory)}


def load_applied(directory: str) -> dict[str, Any]:
    """A rollback: the originals come back, or (damaged record) nothing changes."""
    ap = Applier(os.path.join(directory, "tree"), os.path.join(directory, "state"))
    before = _digest(directory)
    try:
        restored = ap.rollback("p1")
    except Exception:
        assert _digest(directory) == before, "a refused rollback changed the tree"
        raise
    return {"restored": restored, "tree": _digest(directory)}


def load_proposal(directory: str) -> dict[str, Any]:
    """The store on start-up: the proposal as it would be approved, or the file named."""
    store = ProposalStore(os.path.join(directory, "home"))
    for err in store.corrupt():
        raise err
    p = store.get(PROPOSAL_ID)
    return {"proposal": p.to_dict(), "passed": p.passed,
            "diff_sha256": hashlib.sha256(p.diff.encode()).hexdigest()}


#: (name, pristine maker, file damaged, loader, acceptable recovery) -- the table the tests
#: and scripts/fault_sweep.py share.
KINDS = [
    ("audit log", make_audit, AUDIT, "rsi_loaders:load_audit", audit_recovered),
    ("audit head", make_audit, AUDIT_HEAD, "rsi_loaders:load_audit", audit_recovered),
    ("apply journal", make_journal, JOURNAL, "rsi_loaders:load_journal", None),
    ("applied record", make_applied, APPLIED, "rsi_loaders:load_applied", None),
    ("queued proposal", make_proposal, PROPOSAL, "rsi_loaders:load_proposal", None),
]
