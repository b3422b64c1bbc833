"""The control plane's lease across machines (vortex.serving.lease), against moto's S3 server:
contenders in separate processes, killed (-9) and stopped (SIGSTOP) for real; what they believed
is read from their own event logs, what they wrote from the bucket's object versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("s3fs", reason="s3fs (test extra) is needed to reach the S3 server")
pytest.importorskip("moto.server", reason="moto[server] (test extra) provides the S3 server")

pytestmark = pytest.mark.slow  # processes, a server, seconds of leases

from s3_support import S3_ENV, enable_versioning, object_versions, s3, s3_server  # noqa: E402, F401

from vortex.serving.lease import LEASE_NAME, Lease, LeaseCorruptError, LeaseRecord  # noqa: E402

# the children import the vortex this test imported
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **S3_ENV)

TTL, MARGIN = 3.0, 0.5
RENEW = TTL / 5

# A contender. hold > 0: take turns (hold the lease that long, release it, rest, contend again);
# hold == 0: keep it with Lease.start() while the main thread watches Lease.held (the deadline).
# Every change of belief is one fsynced JSON line: acquired when the PUT succeeded, lost when
# the process stepped down (for a deadline: when it noticed, i.e. never earlier than the truth).
_CONTENDER = textwrap.dedent("""
    import json, os, sys, time
    from vortex.serving.lease import Lease
    url, options, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    ttl, renew, margin, hold = (float(a) for a in sys.argv[4:8])
    out = open(path, "a", buffering=1)
    def event(kind, **kw):
        out.write(json.dumps({"event": kind, "t": time.time(), "pid": os.getpid(), **kw}) + "\\n")
        out.flush()
        os.fsync(out.fileno())
    lease = Lease(url, options, ttl_secs=ttl, renew_secs=renew, margin_secs=margin)
    lease.on_acquired = lambda fencing: event("acquired", fencing=fencing, token=lease.token)
    lease.on_lost = lambda reason: event("lost", reason=reason)
    event("started", token=lease.token)
    if not hold:
        lease.start()
        while True:
            lease.held  # steps down at the deadline even while the keeper thread is stuck
            time.sleep(0.02)
    since = last = 0.0
    while True:
        now = time.monotonic()
        if lease.held:
            if now - since > hold:
                lease.release()
                time.sleep(hold / 2)
            elif now - last > renew:
                lease.renew()
                last = now
        elif lease.try_acquire():
            since = last = time.monotonic()
        time.sleep(0.03)
""")


def _contender(url, options, log, hold=0.0):
    return subprocess.Popen([sys.executable, "-c", _CONTENDER, url, json.dumps(options), str(log), str(TTL),
                             str(RENEW), str(MARGIN), str(hold)], env=ENV)


def _events(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


def _tenures(logs, end):
    """(start, end, fencing, pid) of every holding, from the contenders' logs."""
    out = []
    for log in logs:
        start = None
        for e in _events(log):
            if e["event"] == "acquired":
                start = (e["t"], e["fencing"], e["pid"])
            elif e["event"] == "lost" and start is not None:
                out.append((start[0], e["t"], start[1], start[2]))
                start = None
        if start is not None:
            out.append((start[0], end, start[1], start[2]))
    return sorted(out)


def _stop(*procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _versions(options, url):
    """Every version of the lease object, oldest first, as records."""
    return [LeaseRecord.parse(data, "lease") for data in object_versions(options, f"{url}/{LEASE_NAME}")]


def test_two_contenders_taking_turns_never_hold_at_once(s3, tmp_path):
    url, options, fs = s3
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_contender(url, options, log, hold=0.4) for log in logs]
    samples = []  # the lease object as an outsider sees it meanwhile
    try:
        outsider = Lease(url, options, ttl_secs=TTL)
        _wait_for(lambda: all(_events(log) for log in logs), timeout=120)  # both started (a loaded machine)
        until, give_up = time.monotonic() + 6.0, time.monotonic() + 60.0
        while time.monotonic() < until or (len(_tenures(logs, time.time())) < 4 and time.monotonic() < give_up):
            seen = outsider.read()
            if seen is not None:
                samples.append(seen[1])
            time.sleep(0.05)
        end = time.time()
    finally:
        _stop(*procs)
    tenures = _tenures(logs, end)
    assert len(tenures) >= 4 and {t[3] for t in tenures} == {p.pid for p in procs}, tenures
    for before, after in zip(tenures, tenures[1:], strict=False):
        assert before[1] <= after[0], f"two holders at once: {before} and {after}"
        assert after[2] == before[2] + 1  # each takeover increments the fencing number
    fencings = [r.fencing for r in samples]
    assert fencings == sorted(fencings) and {r.pid for r in samples} <= {p.pid for p in procs}


def test_a_killed_holder_is_replaced_after_ttl_and_margin(s3, tmp_path):
    url, options, _ = s3
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = _contender(url, options, a_log)
    b = None
    try:
        first = _wait_for(lambda: [e for e in _events(a_log) if e["event"] == "acquired"])[0]
        b = _contender(url, options, b_log)
        _wait_for(lambda: _events(b_log))  # b is up and looking at a's lease
        time.sleep(TTL)  # b has seen a renew for a while
        assert not [e for e in _events(b_log) if e["event"] == "acquired"]  # a is alive: b waits
        a.kill()
        killed = time.time()
        taken = _wait_for(lambda: [e for e in _events(b_log) if e["event"] == "acquired"], timeout=TTL * 10)[0]
    finally:
        _stop(*(p for p in (a, b) if p is not None))
    assert taken["fencing"] == first["fencing"] + 1
    # a's last renewal (some RENEW before the kill) aged ttl + margin on b's clock, then b took
    # it at its next look (every RENEW) plus a few requests' time (seconds on a loaded machine)
    assert TTL + MARGIN - 2 * RENEW <= taken["t"] - killed <= TTL + MARGIN + RENEW + 10.0


def test_a_stopped_holder_steps_down_without_writing_after_its_deadline(s3, tmp_path):
    url, options, fs = s3
    enable_versioning(options, url)
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = _contender(url, options, a_log)
    b = None
    try:
        _wait_for(lambda: [e for e in _events(a_log) if e["event"] == "acquired"])
        b = _contender(url, options, b_log)
        _wait_for(lambda: _events(b_log))
        time.sleep(RENEW * 2)
        os.kill(a.pid, signal.SIGSTOP)
        stopped = time.time()
        taken = _wait_for(lambda: [e for e in _events(b_log) if e["event"] == "acquired"], timeout=TTL * 10)[0]
        time.sleep(RENEW * 2)
        os.kill(a.pid, signal.SIGCONT)
        lost = _wait_for(lambda: [e for e in _events(a_log) if e["event"] == "lost"])[0]
        time.sleep(RENEW * 4)  # time for a to write, were it to
    finally:
        _stop(*(p for p in (a, b) if p is not None))
    assert "deadline" in lost["reason"] and lost["t"] > taken["t"] > stopped
    assert [e["event"] for e in _events(a_log)] == ["started", "acquired", "lost"]  # never again
    a_token = next(e["token"] for e in _events(a_log) if e["event"] == "started")
    history = _versions(options, url)
    holders = [r.token for r in history]
    first_b = holders.index(taken["token"])
    assert a_token in holders[:first_b] and a_token not in holders[first_b:]
    assert [r.fencing for r in history[first_b:]] == [2] * (len(history) - first_b)
    assert all(r.renewal == i for i, r in enumerate(history[first_b:]))  # b's own writes only
    # a's last write was sent before it stopped (a write's record is stamped before its PUT)
    assert max(r.written_at for r in history[:first_b]) < stopped


def test_a_stale_renewal_is_refused_and_its_holder_steps_down(s3):
    url, options, fs = s3
    now = {"a": 0.0, "b": 0.0}
    a = Lease(url, options, ttl_secs=TTL, margin_secs=MARGIN, clock=lambda: now["a"])
    b = Lease(url, options, ttl_secs=TTL, margin_secs=MARGIN, clock=lambda: now["b"])
    assert a.try_acquire() and a.fencing == 1
    assert not b.try_acquire()  # b sees a's lease for the first time
    now["b"] += TTL + MARGIN + 0.01  # b's clock runs on; a's does not (a paused holder, say)
    assert b.try_acquire() and b.fencing == 2
    stale = a._etag
    assert a.held  # by a's own clock it still is: only the storage can tell
    assert not a.renew() and not a.held and "taken over" in a.lost_reason and str(b.pid) in a.lost_reason
    record = LeaseRecord.parse(fs.cat_file(f"{url}/{LEASE_NAME}"), "lease")
    assert (record.token, record.fencing) == (b.token, 2)
    with pytest.raises(OSError):  # the storage refuses the stale condition itself
        fs.pipe_file(f"{url}/{LEASE_NAME}", b"{}", IfMatch=stale)
    now["b"] += RENEW
    assert b.renew() and b.held
    b.release()  # released: a takes it at once, no waiting
    assert a.try_acquire() and a.fencing == 3


def test_a_damaged_lease_is_reported_and_never_taken(s3):
    url, options, fs = s3
    fs.pipe_file(f"{url}/{LEASE_NAME}", b'{"host": "x", "fencing": ')
    lease = Lease(url, options, ttl_secs=TTL, clock=lambda: 1e9)
    with pytest.raises(LeaseCorruptError, match=LEASE_NAME):
        lease.try_acquire()
    assert not lease.held and fs.cat_file(f"{url}/{LEASE_NAME}") == b'{"host": "x", "fencing": '


def test_bad_lease_settings_are_refused(s3):
    url, options, _ = s3
    with pytest.raises(ValueError, match="renew_secs"):
        Lease(url, options, ttl_secs=1.0, renew_secs=1.0)
    with pytest.raises(ValueError, match="ttl_secs"):
        Lease(url, options, ttl_secs=0)
    with pytest.raises(ValueError, match="conditional writes"):
        Lease("memory://fleet", ttl_secs=1.0)


def test_a_holder_past_its_deadline_writes_nothing_and_a_lost_answer_is_adopted(s3):
    url, options, fs = s3
    now = [0.0]
    a = Lease(url, options, ttl_secs=TTL, margin_secs=MARGIN, clock=lambda: now[0])
    assert a.try_acquire()
    path = f"{url}/{LEASE_NAME}"
    before = a._etag
    now[0] += RENEW
    assert a.renew()  # renewed: the deadline moves to now + ttl
    # the answer of the next renewal is lost although it landed: a still has the older ETag
    landed = a._etag
    a._etag = before
    now[0] += RENEW
    assert a.renew() and a._etag == landed != before  # refused (stale ETag), re-read: its own write, adopted
    assert LeaseRecord.parse(fs.cat_file(path), path).token == a.token and a.fencing == 1
    # past the deadline: steps down and sends nothing (the object keeps its ETag)
    etag = fs.info(path)["ETag"]
    now[0] += TTL
    assert not a.renew() and "deadline" in a.lost_reason and a.fencing is None
    fs.invalidate_cache(path)
    assert fs.info(path)["ETag"] == etag
