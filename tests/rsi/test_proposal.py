import os
import threading
import time

import pytest

from vortex.errors import ProposalNotFoundError, ProposalStateError
from vortex.monitor.weaknesses import Weakness, WeaknessType
from vortex.rsi.proposal import (ImprovementProposal, ProposalStatus, ProposalStore, RiskLevel,
                                 TunableMove)


def _p(**kw):
    return ImprovementProposal(id=ImprovementProposal.new_id(), description="d",
                               weakness=Weakness(WeaknessType.LATENCY_SPIKE, 0.5, "slow", time.time(),
                                                 9.0, 5.0, 60), diff="--- a/x\n+++ b/x\n",
                               proposer="t", risk=RiskLevel.LOW,
                               moves=[TunableMove("w", 4, 8, "increase")], **kw)


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
