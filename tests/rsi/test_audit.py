import multiprocessing
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
