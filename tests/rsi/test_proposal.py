import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from vortex._io import SEAL_SIZE, atomic_write_sealed_json
from vortex.errors import (CorruptFileError, ProposalCorruptError, ProposalNotFoundError,
                           ProposalStateError)
from vortex.monitor.weaknesses import Weakness, WeaknessType
from vortex.rsi.proposal import (ImprovementProposal, ProposalStatus, ProposalStore, RiskLevel,
                                 TunableMove)


def _env():
    import vortex

    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(vortex.__file__))
    return env


def _p(**kw):
    return ImprovementProposal(id=ImprovementProposal.new_id(), description="d",
                               weakness=Weakness(WeaknessType.LATENCY_SPIKE, 0.5, "slow", time.time(),
                                                 9.0, 5.0, 60), proposer="t", risk=RiskLevel.LOW,
                               moves=[TunableMove("w", 4, 8, "increase")],
                               **{"diff": "--- a/x\n+++ b/x\n", **kw})


def test_persisted_and_seen_after_restart(tmp_path):
    store = ProposalStore(tmp_path)
    p = _p()
    store.save(p)
    store.transition(p, ProposalStatus.TESTING)
    store.transition(p, ProposalStatus.APPROVED, "ok")
    again = ProposalStore(tmp_path).get(p.id)
    assert again.status == ProposalStatus.APPROVED
    assert again.moves == [TunableMove("w", 4, 8, "increase")]
    assert again.weakness == p.weakness and again.weakness_type == "latency_spike"
    assert [h[1] for h in again.history] == ["testing", "approved"]
    assert again.to_dict()["diff_sha256"] == p.diff_sha256
    assert not [n for n in os.listdir(store.dir) if n.endswith(".tmp")]


def test_illegal_transitions(tmp_path):
    store = ProposalStore(tmp_path)
    p = _p()
    store.save(p)
    with pytest.raises(ProposalStateError, match="cannot become applied"):
        store.transition(p, ProposalStatus.APPLIED)
    store.transition(p, ProposalStatus.REJECTED)
    with pytest.raises(ProposalStateError):
        store.transition(p, ProposalStatus.PROPOSED)
    assert ProposalStore(tmp_path).get(p.id).status == ProposalStatus.REJECTED


def test_missing_and_listing(tmp_path):
    store = ProposalStore(tmp_path)
    with pytest.raises(ProposalNotFoundError, match="nope"):
        store.get("nope")
    ps = [_p() for _ in range(5)]
    threads = [threading.Thread(target=store.save, args=(p,)) for p in ps]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {p.id for p in ProposalStore(tmp_path).list()} == {p.id for p in ps}
    assert ProposalStore(tmp_path).list(ProposalStatus.APPLIED) == []


def _flip_diff_digit(path):
    """Change one character of the stored diff, as a flipped bit in a digit would."""
    raw = path.read_bytes()
    doc = json.loads(raw[:-SEAL_SIZE])
    at = raw.index(json.dumps(doc["diff"])[1:-1].encode()) + doc["diff"].index("8")
    path.write_bytes(raw[:at] + b"9" + raw[at + 1:])


def test_a_damaged_file_is_named_and_the_others_stay_readable(tmp_path):
    store = ProposalStore(tmp_path)
    ps = [_p(diff="--- a/x\n+++ b/x\n@@ -1 +1 @@\n-workers = 4\n+workers = 8\n") for _ in range(3)]
    for p in ps:
        store.save(p)
    bad = tmp_path / "rsi" / "proposals" / f"{ps[1].id}.json"
    _flip_diff_digit(bad)
    again = ProposalStore(tmp_path)
    assert {p.id for p in again.list()} == {ps[0].id, ps[2].id}
    (err,) = again.corrupt()
    assert isinstance(err, ProposalCorruptError) and isinstance(err, CorruptFileError)
    assert err.path == str(bad) and "seal" in err.problem and "delete it" in err.remedy
    with pytest.raises(ProposalCorruptError, match=f"{ps[1].id}.json"):
        again.get(ps[1].id)
    # the store that wrote it notices too (the file changed under it)
    with pytest.raises(ProposalCorruptError):
        store.get(ps[1].id)
    with pytest.raises(ProposalCorruptError):
        store.transition(ps[1], ProposalStatus.TESTING)


def test_a_diff_that_is_not_the_tested_one_is_refused_even_with_a_valid_checksum(tmp_path):
    # a writer that changed the diff but kept the tested hash (a bug, or a hand edit that
    # resealed the file) is caught by the separate tested-diff hash
    store = ProposalStore(tmp_path)
    p = _p(diff="--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    store.save(p)
    store.transition(p, ProposalStatus.TESTING)
    store.transition(p, ProposalStatus.PROPOSED, changes={"tested_diff_sha256": p.diff_sha256,
                                                          "test_result": {"passed": True}})
    assert p.passed
    path = tmp_path / "rsi" / "proposals" / f"{p.id}.json"
    doc = json.loads(path.read_bytes()[:-SEAL_SIZE])
    doc["diff"] = doc["diff"].replace("+b", "+c")
    doc["diff_sha256"] = hashlib.sha256(doc["diff"].encode()).hexdigest()
    atomic_write_sealed_json(path, doc)
    with pytest.raises(ProposalCorruptError, match="not the diff that was tested"):
        ProposalStore(tmp_path).get(p.id)


def test_changes_by_another_process_are_seen_at_the_next_read(tmp_path):
    store = ProposalStore(tmp_path)
    p = _p()
    store.save(p)
    assert store.get(p.id).status == ProposalStatus.PROPOSED
    code = (f"from vortex.rsi.proposal import ProposalStore, ProposalStatus\n"
            f"s = ProposalStore({str(tmp_path)!r})\n"
            f"s.transition(s.get({p.id!r}), ProposalStatus.REJECTED, 'by the other process')\n")
    subprocess.run([sys.executable, "-P", "-c", code], check=True, env=_env())
    assert store.get(p.id).status == ProposalStatus.REJECTED
    assert p.status == ProposalStatus.REJECTED  # the object callers hold follows too
    assert [q.status for q in store.list()] == [ProposalStatus.REJECTED]
    # a new proposal saved elsewhere shows up in list(), a deleted one disappears
    code = (f"import time\nfrom vortex.monitor.weaknesses import Weakness, WeaknessType\n"
            f"from vortex.rsi.proposal import ProposalStore, ImprovementProposal\n"
            f"s = ProposalStore({str(tmp_path)!r})\n"
            f"s.save(ImprovementProposal(id='other', description='d', weakness=Weakness("
            f"WeaknessType.LATENCY_SPIKE, 0.5, 'x', time.time(), 1.0, 1.0, 1), diff='--- a/x\\n', proposer='t'))\n")
    subprocess.run([sys.executable, "-P", "-c", code], check=True, env=_env())
    assert {q.id for q in store.list()} == {p.id, "other"}
    os.unlink(tmp_path / "rsi" / "proposals" / f"{p.id}.json")
    assert {q.id for q in store.list()} == {"other"}
    with pytest.raises(ProposalNotFoundError):
        store.get(p.id)


def test_transition_is_a_compare_and_set_against_the_file(tmp_path):
    a, b = ProposalStore(tmp_path), ProposalStore(tmp_path)
    p = _p()
    a.save(p)
    pb = b.get(p.id)
    a.transition(p, ProposalStatus.TESTING)
    # b's view was taken before; approving "from proposed" must not go through
    with pytest.raises(ProposalStateError, match="is testing; cannot become approved from that state"):
        b.transition(pb, ProposalStatus.APPROVED, allowed_from={ProposalStatus.PROPOSED})
    assert pb.status == ProposalStatus.TESTING  # b's object now shows the file
    assert ProposalStore(tmp_path).get(p.id).status == ProposalStatus.TESTING
    with pytest.raises(ValueError, match="'bogus'"):
        a.transition(p, ProposalStatus.PROPOSED, changes={"bogus": 1})


def test_orphan_temp_files_are_removed_on_open(tmp_path):
    store = ProposalStore(tmp_path)
    store.save(_p())
    orphan = tmp_path / "rsi" / "proposals" / ".vtx-x.json.99999999-Ab12Cd.tmp"  # no such pid
    orphan.write_text("{half")
    again = ProposalStore(tmp_path)
    assert not orphan.exists() and again.removed_temp_files == [orphan.name]
    assert len(again.list()) == 1 and again.corrupt() == []
