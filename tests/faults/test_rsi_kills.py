"""kill -9 of RSI writers at random moments (and at chosen ones), the state checked after each.

``VORTEX_KILLS=200`` runs that many random kills instead of 30 (the apply/rollback loop; the
audit appends get half as many).

After every kill a new engine starts on the same home (its recovery runs), and then: the tree
is byte-identical to before or to after the change, every proposal's status agrees with the
tree, an interrupted apply can be approved again, and the audit log verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from harness import kill_at_random
from rsi_loaders import make_tree, proposal, tree_diff
from rsi_support import TINY_PYPROJECT
from vortex.rsi.apply import Applier
from vortex.rsi.audit import AuditLog
from vortex.rsi.engine import RSIEngine
from vortex.rsi.proposal import ProposalStatus
from vortex.rsi.trees import tree_sha256

KILLS = int(os.environ.get("VORTEX_KILLS", "30"))

def _queue(tmp_path, n):
    """A tree (12 files of ~90 KB: an apply takes a few ms) and ``n`` queued proposals of one
    diff, each with a passed test on this tree whose candidate files are known."""
    root = make_tree(str(tmp_path / "tree"), files=12, lines=4000)
    with open(os.path.join(root, "pyproject.toml"), "w") as fh:
        fh.write(TINY_PYPROJECT)  # its tunables are make_tree's conf.toml
    diff = tree_diff(root, files=12)
    home = str(tmp_path / "home")
    eng = RSIEngine(root, home)
    candidate = {rel: None if data is None else hashlib.sha256(data).hexdigest()
                 for rel, data in Applier(root, str(tmp_path / "scratch-state")).compute(diff).items()}
    result = {"passed": True, "tree_sha256": tree_sha256(root), "candidate_files": candidate,
              "errors": [], "network_isolated": True}
    for i in range(n):
        p = proposal(diff, pid=f"p{i:04d}", target=root)
        eng.store.save(p)
        eng.store.transition(p, ProposalStatus.TESTING)
        eng.store.transition(p, ProposalStatus.PROPOSED, "passed",
                             changes={"test_result": result, "tested_diff_sha256": p.diff_sha256})
    return root, home


LOOP = textwrap.dedent("""
    from vortex.rsi.engine import RSIEngine
    from vortex.rsi.proposal import ProposalStatus
    eng = RSIEngine({root!r}, {home!r})
    print("ready", flush=True)
    for p in eng.list_proposals(ProposalStatus.PROPOSED):
        eng.approve_proposal(p.id, "kill-test")
        eng.rollback_proposal(p.id, "kill-test")
""")


def _check_and_reset(root, home, before, after, seen):
    """Start an engine (recovery), check the state, and bring the tree back to ``before``."""
    eng = RSIEngine(root, home)
    state = tree_sha256(root)
    assert state in (before, after), "the tree is neither before nor after the change"
    ps = eng.list_proposals()
    statuses = [p.status for p in ps]
    assert ProposalStatus.APPROVED not in statuses and ProposalStatus.TESTING not in statuses
    applied = [p for p in ps if p.status == ProposalStatus.APPLIED]
    assert [p.id for p in applied] == list(eng.applier.applied_ids())
    assert len(applied) == (1 if state == after else 0), (state == after, [p.id for p in applied])
    assert eng.audit.verify().ok, eng.audit.verify()
    for note in eng.recovered:
        for key in ("apply interrupted", "apply completed", "rollback completed",
                    "rollback interrupted", "torn_tail_set_aside", "newline_restored"):
            if key in note:
                seen[key] = seen.get(key, 0) + 1
    interrupted = [p for p in ps if p.status == ProposalStatus.PROPOSED
                   and any("apply interrupted" in h[2] for h in p.history)
                   and p.history[-1][1] == "proposed"]
    if interrupted and state == before:  # approvable again, exactly as tested
        p = interrupted[-1]
        eng.approve_proposal(p.id, "after-kill")
        assert tree_sha256(root) == after
        applied = [p]
    for p in applied:
        eng.rollback_proposal(p.id, "reset")
    assert tree_sha256(root) == before
    assert eng.audit.verify().ok


@pytest.mark.slow
def test_kill_9_during_engine_apply_and_rollback(tmp_path):
    root, home = _queue(tmp_path, 6 * KILLS)
    before = tree_sha256(root)
    probe = str(tmp_path / "probe")
    make_tree(probe, files=12, lines=4000)
    Applier(probe, str(tmp_path / "probe-state")).apply("x", tree_diff(probe, files=12))
    with open(os.path.join(root, "pyproject.toml"), "rb") as src, \
            open(os.path.join(probe, "pyproject.toml"), "wb") as dst:
        dst.write(src.read())
    after = tree_sha256(probe)
    seen: dict[str, int] = {}
    kills = 0
    for i in range(KILLS):
        code, out = kill_at_random(LOOP.format(root=root, home=home), delay=(0.0, 0.6), seed=i,
                                   ready="ready")
        kills += code == -9
        _check_and_reset(root, home, before, after, seen)
    print(json.dumps({"kills": kills, "recoveries": seen}))
    assert kills >= 0.8 * KILLS  # the loop outlives the delay: almost every run is killed mid-way
    assert seen.get("apply interrupted", 0) + seen.get("rollback completed", 0) \
        + seen.get("apply completed", 0) + seen.get("rollback interrupted", 0) > 0


# a child that SIGKILLs itself right after the first tree file of the transaction is written
AT_POINT = textwrap.dedent("""
    import os, signal
    import vortex.rsi.apply as apply_mod
    from vortex.rsi.engine import RSIEngine
    real = apply_mod.atomic_write_at
    def write_then_die(*a, **kw):
        real(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)
    eng = RSIEngine({root!r}, {home!r})
    {before}
    apply_mod.atomic_write_at = write_then_die
    eng.{action}
""")


@pytest.mark.parametrize("op", ["apply", "rollback"])
def test_kill_after_the_first_file_of_a_transaction(tmp_path, op):
    root, home = _queue(tmp_path, 2)
    before = tree_sha256(root)
    setup = 'eng.approve_proposal("p0000", "x")' if op == "rollback" else ""
    action = 'rollback_proposal("p0000")' if op == "rollback" else 'approve_proposal("p0000", "x")'
    child = subprocess.run([sys.executable, "-c", AT_POINT.format(root=root, home=home, before=setup,
                                                                  action=action)],
                           env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr
    half = tree_sha256(root)
    eng = RSIEngine(root, home)
    p = eng.store.get("p0000")
    if op == "apply":
        assert half != before and tree_sha256(root) == before  # the journal undid the write
        assert p.status == ProposalStatus.PROPOSED and p.passed
        assert "apply interrupted" in p.history[-1][2]
        events = [e["event"] for e in eng.audit.entries()]
        assert "apply_interrupted" in events and "journal_replayed" in events
        eng.approve_proposal(p.id, "again")  # approvable again, no re-test needed
        assert eng.store.get(p.id).status == ProposalStatus.APPLIED
    else:
        applied = tree_sha256(root)
        assert half != applied and p.status == ProposalStatus.APPLIED
        assert "rollback_interrupted" in [e["event"] for e in eng.audit.entries()]
        eng.rollback_proposal(p.id)
        assert tree_sha256(root) == before
    assert eng.audit.verify().ok


APPEND_LOOP = textwrap.dedent("""
    from vortex.rsi.audit import AuditLog
    log = AuditLog({path!r})
    print("ready", flush=True)
    i = 0
    while True:
        log.append("big", i=i, blob="x" * (1_000_000 + 500_000 * (i % 4)))
        i += 1
""")


@pytest.mark.slow
def test_kill_9_during_large_audit_appends(tmp_path):
    path = str(tmp_path / "rsi" / "audit.jsonl")
    AuditLog(path).append("start")
    torn = kills = 0
    for i in range(KILLS // 2):
        code, _ = kill_at_random(APPEND_LOOP.format(path=path), delay=(0.0, 0.3), seed=i, ready="ready")
        kills += code == -9
        log = AuditLog(path)
        v = log.verify()
        assert v.ok or v.recoverable, v  # a torn tail or a missing newline, never a broken chain
        entries = v.entries
        log.append("after kill", n=i)  # appending always works again
        v = log.verify()
        assert v.ok and v.entries >= entries + 1, v
        torn = sum(r["kind"] == "torn_tail_set_aside" for r in v.recoveries)
    print(json.dumps({"kills": kills, "torn_tails_set_aside": torn}))
    assert kills == KILLS // 2
