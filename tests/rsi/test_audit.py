import hashlib
import json
import multiprocessing
import os
import threading

import pytest

from vortex.errors import AuditLogError
from vortex.rsi.audit import AuditLog

from rsi_support import append_many


def test_chain_and_verify(tmp_path):
    log = AuditLog(tmp_path / "a.jsonl")
    assert log.verify().ok and log.verify().entries == 0
    for i in range(5):
        log.append("event", i=i)
    v = log.verify()
    assert v.ok and v.entries == 5 and v.first_bad_line is None
    entries = log.entries()
    assert entries[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:]))


@pytest.mark.parametrize("tamper,line", [
    (lambda ls: ls.__setitem__(2, ls[2].replace('"i":2', '"i":9')), 3),
    (lambda ls: ls.pop(1), 2),
    (lambda ls: ls.insert(3, ls[3]), 5),  # the copy at line 4 is still a valid link
    (lambda ls: ls.__setitem__(4, "not json"), 5),
])
def test_tampering_found_at_first_bad_line(tmp_path, tamper, line):
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    for i in range(6):
        log.append("event", i=i)
    lines = path.read_text().splitlines()
    tamper(lines)
    path.write_text("\n".join(lines) + "\n")
    v = log.verify()
    assert not v.ok and v.first_bad_line == line and v.reason


def test_concurrent_appends_keep_the_chain(tmp_path):
    path = str(tmp_path / "a.jsonl")
    log = AuditLog(path)
    threads = [threading.Thread(target=lambda: [log.append("t", i=i) for i in range(30)]) for _ in range(4)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=append_many, args=(path, 30)) for _ in range(2)]
    for x in threads + procs:
        x.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    v = log.verify()
    assert v.ok and v.entries == 180


def test_corrupt_tail_refuses_append(tmp_path):
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    log.append("x")
    with open(path, "a") as fh:
        fh.write("garbage\n")
    with pytest.raises(AuditLogError, match="last complete line is not a valid audit entry"):
        log.append("y")


def _log_with(tmp_path, n=5):
    path = tmp_path / "rsi" / "audit.jsonl"
    log = AuditLog(path)
    for i in range(n):
        log.append("event", i=i)
    return path, log


def test_head_file_follows_every_append(tmp_path):
    path, log = _log_with(tmp_path)
    head = json.loads((tmp_path / "rsi" / "audit.head").read_text())
    last = log.entries()[-1]
    assert head == {"seq": last["seq"], "hash": last["hash"]} == {"seq": 4, "hash": last["hash"]}
    v = log.verify()
    assert v.ok and v.head_status == "match" and v.head_seq == 4 and v.notes == ()


@pytest.mark.parametrize("cut", ["last line", "two lines", "all lines", "log deleted"])
def test_truncation_is_reported(tmp_path, cut):
    path, log = _log_with(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    if cut == "log deleted":
        path.unlink()
    else:
        path.write_bytes(b"".join(lines[:{"last line": 4, "two lines": 3, "all lines": 0}[cut]]))
    v = log.verify()
    assert not v.ok and v.head_status == "ahead" and not v.recoverable
    assert "head records seq 4" in v.reason and "removed" in v.reason
    with pytest.raises(AuditLogError, match="audit.jsonl: .*removed"):
        log.check()
    # appending goes on, and the loss is recorded in the chain for good
    log.append("after")
    v = log.verify()
    assert not v.ok and "entries were lost" in v.reason
    (rec,) = v.recoveries
    assert rec["kind"] == "truncation_detected" and rec["head"][0] == 4 and v.first_bad_line == rec["line"]
    assert log.entries()[-1]["event"] == "after"


def test_head_one_behind_after_a_crash_between_append_and_head_is_accepted(tmp_path):
    path, log = _log_with(tmp_path, 3)
    head_before = (tmp_path / "rsi" / "audit.head").read_bytes()
    log.append("last")
    (tmp_path / "rsi" / "audit.head").write_bytes(head_before)  # the head write never happened
    v = log.verify()
    assert v.ok and v.head_status == "behind" and v.head_seq == 2 and "one entry behind" in v.notes[0]
    log.append("next")
    v = log.verify()
    assert v.ok and v.head_status == "match" and v.entries == 5 and v.recoveries == ()


def test_head_rewritten_history_or_damaged_head_is_reported(tmp_path):
    path, log = _log_with(tmp_path)
    head = tmp_path / "rsi" / "audit.head"
    head.write_text(json.dumps({"seq": 4, "hash": "f" * 64}))
    v = log.verify()
    assert not v.ok and v.head_status == "mismatch"
    head.write_text("{not json")
    v = log.verify()
    assert not v.ok and v.head_status == "unreadable" and "audit.head" in v.reason


def test_torn_tail_of_an_interrupted_append_is_set_aside_and_recorded(tmp_path):
    path, log = _log_with(tmp_path)
    good = path.read_bytes()
    torn = b'{"data":{"blob":"' + b"x" * 3_000_000  # an MB-sized entry cut by a kill
    with open(path, "ab") as fh:
        fh.write(torn)
    v = log.verify()
    assert not v.ok and v.recoverable and v.torn_tail_bytes == len(torn) and v.entries == 5
    assert v.head_status == "match"  # the torn entry was never acknowledged
    entry = log.append("after the crash", n=1)
    assert entry["seq"] == 6  # 5 = the recorded recovery
    (aside,) = [p for p in os.listdir(tmp_path / "rsi") if p.startswith("audit.jsonl.torn-")]
    assert (tmp_path / "rsi" / aside).read_bytes() == torn  # kept byte for byte, out of the log
    assert path.read_bytes().startswith(good) and torn not in path.read_bytes()
    v = log.verify()
    assert v.ok and v.entries == 7
    (rec,) = v.recoveries
    assert rec["kind"] == "torn_tail_set_aside" and rec["bytes"] == len(torn)
    assert rec["sha256"] == hashlib.sha256(torn).hexdigest() and rec["saved_to"] == aside
    assert log.recover() == []  # clean now: nothing more to record


def test_missing_final_newline_is_reported_then_restored_not_glued(tmp_path):
    path, log = _log_with(tmp_path)
    path.write_bytes(path.read_bytes()[:-1])
    v = log.verify()
    assert not v.ok and v.recoverable and "without its final newline" in v.reason and v.entries == 4
    log.append("next")
    lines = path.read_bytes().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["event"] * 5 + ["audit_recovered", "next"]
    v = log.verify()
    assert v.ok and v.entries == 7 and [r["kind"] for r in v.recoveries] == ["newline_restored"]


def test_verify_of_a_missing_log_creates_nothing(tmp_path):
    log = AuditLog(tmp_path / "nohome" / "rsi" / "audit.jsonl")
    v = log.verify()
    assert v.ok and v.entries == 0 and not v.exists
    assert log.recover() == [] and log.entries() == []
    assert not (tmp_path / "nohome").exists()
