import json
import os
import subprocess
import sys
import time

from vortex.cli import main
from vortex.config import RSIConfig
from vortex.monitor.weaknesses import Weakness, WeaknessType
from vortex.rsi.engine import RSIEngine



def W(kind):
    return Weakness(WeaknessType(kind), 0.5, "test", time.time(), 2.0, 1.0, 100)


def _json(capsys, argv):
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_audit_verify_reports_first_bad_line(tmp_path, capsys):
    from vortex.rsi.audit import AuditLog

    home = str(tmp_path / "home")
    log = AuditLog(os.path.join(home, "rsi", "audit.jsonl"))
    for i in range(4):
        log.append("e", i=i)
    code, out = _json(capsys, ["audit", "verify", "--home", home, "--json"])
    assert code == 0 and out["ok"] and out["entries"] == 4
    with open(log.path) as fh:
        lines = fh.read().splitlines()
    lines[2] = lines[2].replace('"i":2', '"i":3')
    with open(log.path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    code, out = _json(capsys, ["audit", "verify", "--home", home, "--json"])
    assert code == 1 and out["first_bad_line"] == 3 and not out["ok"]
    assert main(["audit", "verify", "--home", home]) == 1
    assert "BROKEN at line 3" in capsys.readouterr().out


def test_proposals_commands(sample_tree, tmp_path, capsys):
    home = str(tmp_path / "home")
    eng = RSIEngine(sample_tree, home, RSIConfig(enabled=True, benchmark_repeats=9))  # see test_engine.CFG
    eng.rsi_cycle([W("prediction_error_spike")])  # medium risk: queued
    rejected = eng.propose(W("memory_pressure"))
    (queued,) = [p for p in eng.list_proposals() if p.test_result]
    code, rows = _json(capsys, ["proposals", "list", "--home", home, "--json"])
    assert code == 0 and {r["id"] for r in rows} == {queued.id, rejected.id}
    code, shown = _json(capsys, ["proposals", "show", queued.id, "--home", home, "--json"])
    assert shown["diff"] == queued.diff and shown["risk"] == "medium"
    code, out = _json(capsys, ["proposals", "approve", queued.id, "--home", home, "--by", "carol", "--json"])
    assert code == 0 and out["status"] == "applied"
    code, out = _json(capsys, ["proposals", "reject", rejected.id, "--home", home, "--reason", "no", "--json"])
    assert code == 0 and out["status"] == "rejected"
    code, out = _json(capsys, ["proposals", "rollback", queued.id, "--home", home, "--json"])
    assert code == 0 and out["status"] == "rolled_back"
    code, out = _json(capsys, ["proposals", "rollback", queued.id, "--home", home, "--json"])
    assert code == 1 and out["error"] == "ProposalStateError"
    code, rows = _json(capsys, ["proposals", "list", "--home", home, "--status", "rolled_back", "--json"])
    assert [r["id"] for r in rows] == [queued.id]
    assert RSIEngine(sample_tree, home).store.get(queued.id).approver == "carol"


def test_cli_as_a_process(tmp_path):
    out = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "proposals", "list", "--home", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "no proposals"
