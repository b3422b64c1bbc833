"""FleetReader: discovery, merged histograms, cursors that survive a takeover, folding and
removal of dead workers, and what it does with damaged or stray files."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import naive
import shm_support as s
from vortex.errors import CorruptFileError
from vortex.shm import FleetReader, WorkerSegment
from vortex.shm import fleet as fleet_module
from vortex.shm.location import STATE_NAME, segment_dir


def _worker(home, first, n, *, close=False, window=64, ring=64):
    seg = WorkerSegment.create(home, s.DIM, window=window, ring_capacity=ring)
    for i in range(first, first + n):
        s.write(seg, i)
    if close:
        seg.close()
    return seg


def test_no_worker_yet(home):
    fleet = FleetReader(home)
    assert fleet.workers() == [] and fleet.read_new().metrics == {}
    assert fleet.totals().records == 0
    assert fleet.commit() == []
    assert os.listdir(fleet.directory) == [STATE_NAME]


def test_every_worker_is_found_read_and_merged(home):
    before = time.monotonic_ns()
    a, b = _worker(home, 0, 10), _worker(home, 0, 25)
    after = time.monotonic_ns()
    fleet = FleetReader(home)
    batch = fleet.read_new()
    assert {k: len(v) for k, v in batch.metrics.items()} == {a.path.name: 10, b.path.name: 25}
    assert len(batch.all_metrics()) == 35 and len(batch.all_samples()) == 35
    for recs in batch.metrics.values():
        s.check_metrics(recs)
    lat, conf = fleet.histograms()
    np.testing.assert_array_equal(lat.counts, naive.log_histogram(np.concatenate(
        [s.latency_seconds(10), s.latency_seconds(25)])))
    assert conf.count == 35
    info = {w.name: w for w in fleet.workers()}
    assert info[a.path.name].alive and info[a.path.name].pid == os.getpid()
    assert info[b.path.name].records == 25 and info[b.path.name].unread_records == 0
    # last activity on the machine-wide monotonic clock: a's records all precede b's
    assert before < info[a.path.name].last_record_ns < info[b.path.name].last_record_ns < after
    assert fleet.totals().newest_ns == info[b.path.name].last_record_ns
    c = _worker(home, 0, 3)  # a worker that starts later is found by the next read
    assert len(fleet.read_new().metrics[c.path.name]) == 3
    for seg in (a, b, c):
        seg.close()
    fleet.close()


def test_a_takeover_resumes_at_the_committed_cursors(home):
    seg = _worker(home, 0, 10)
    first = FleetReader(home)
    assert len(first.read_new().metrics[seg.path.name]) == 10
    first.commit()
    for i in range(10, 15):
        s.write(seg, i)
    assert first.read_new().metrics[seg.path.name].index.tolist() == list(range(10, 15))
    # the control plane dies before committing 10..14: its successor reads them again
    first.close()
    second = FleetReader(home)
    assert second.read_new().metrics[seg.path.name].index.tolist() == list(range(10, 15))
    second.commit()
    assert len(FleetReader(home).read_new().metrics[seg.path.name]) == 0
    assert len(FleetReader(home, resume=False).read_new().metrics[seg.path.name]) == 15
    seg.close()


def test_a_dead_worker_is_folded_only_once_read_to_its_end(home):
    live = _worker(home, 0, 5)
    dead = _worker(home, 0, 40, close=True)
    fleet = FleetReader(home)
    before = fleet.totals()
    fleet.read_new(max_per_worker=30)  # the dead worker is not read to its end yet
    assert fleet.commit() == []
    assert dead.path.exists()
    batch = fleet.read_new()
    assert batch.metrics[dead.path.name].index.tolist() == list(range(30, 40))
    assert fleet.commit() == [dead.path.name]
    assert not dead.path.exists() and live.path.exists()
    after = fleet.totals()
    assert after.latency == before.latency and after.records == before.records == 45
    assert fleet.retired_workers == 1
    # a new control plane gets the folded counts from the state file
    again = FleetReader(home)
    assert again.totals().latency == before.latency and again.retired_workers == 1
    assert [w.name for w in again.workers()] == [live.path.name]
    live.close()


def test_a_crash_between_saving_and_removing_never_folds_twice(home, monkeypatch):
    dead = _worker(home, 0, 12, close=True)
    fleet = FleetReader(home)
    fleet.read_new()
    monkeypatch.setattr(fleet_module.os, "unlink", lambda path: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        fleet.commit()  # the state says folded; the file is still there
    monkeypatch.undo()
    fleet.close()  # the control plane is gone (its descriptors, and their locks, with it)
    assert dead.path.exists()
    again = FleetReader(home)
    assert not dead.path.exists()
    assert again.totals().records == 12 and again.retired_workers == 1
    again.commit()
    assert FleetReader(home).totals().records == 12


def test_a_worker_killed_in_another_process_is_read_to_the_end_and_folded(home):
    code = s.writer_code(home, 5000, 8192, 8192).replace("seg.close()", "import os; os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == -9, proc.stderr
    fleet = FleetReader(home)
    (w,) = fleet.workers()
    assert not w.alive and not w.closed and w.records == 5000
    batch = fleet.read_new()
    assert len(batch.all_metrics()) == 5000 and len(batch.all_samples()) == 5000
    assert fleet.commit() == [w.name]
    assert fleet.totals().records == 5000


def test_a_damaged_segment_is_set_aside_and_the_others_are_read(home):
    good = _worker(home, 0, 7)
    bad = _worker(home, 0, 7, close=True)
    with open(bad.path, "r+b") as fh:
        fh.seek(20)
        fh.write(b"\xff")
    fleet = FleetReader(home)
    assert list(fleet.problems) == [bad.path.name]
    assert isinstance(fleet.problems[bad.path.name], CorruptFileError)
    assert not bad.path.exists() and bad.path.with_name(bad.path.name + ".corrupt").exists()
    assert len(fleet.read_new().metrics[good.path.name]) == 7
    assert fleet.totals().records == 7
    good.close()


def test_a_segment_under_a_name_that_is_not_its_own_is_set_aside(home):
    seg = _worker(home, 0, 3, close=True)
    forged = seg.path.with_name("worker-1-2-00000000000000ab.seg")
    shutil.copy(seg.path, forged)
    fleet = FleetReader(home)
    assert "names another writer" in str(fleet.problems[forged.name])
    assert fleet.totals().records == 3  # counted once


def test_orphan_temporary_files_of_killed_creators_are_removed(home):
    seg = _worker(home, 0, 1)
    directory = segment_dir(home)
    orphan = directory / ".vtx-worker-999999-1-00000000000000aa.seg.999999-abc123.tmp"
    orphan.write_bytes(b"half a header")
    held = directory / f".vtx-worker-1-1-00000000000000bb.seg.{os.getpid()}-def456.tmp"
    held.write_bytes(b"")
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a creator that is still at work
    try:
        FleetReader(home).commit()
        assert not orphan.exists() and held.exists()
    finally:
        os.close(fd)
        held.unlink()
    seg.close()


def test_a_damaged_state_file_is_reported_not_guessed(home):
    seg = _worker(home, 0, 2)
    FleetReader(home).commit()
    state = segment_dir(home) / STATE_NAME
    data = bytearray(state.read_bytes())
    data[10] ^= 0x20
    state.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=STATE_NAME):
        FleetReader(home)
    fresh = FleetReader(home, resume=False)
    assert len(fresh.read_new().metrics[seg.path.name]) == 2
    fresh.commit()  # replaces the damaged state
    assert FleetReader(home).totals().records == 2
    seg.close()


def test_failed_requests_are_counted_apart_from_prediction_errors_and_survive_folding(home):
    from vortex.shm import WorkerSegment

    live = WorkerSegment.create(home, 4)
    dead = WorkerSegment.create(home, 4)
    for seg in (live, dead):
        seg.record_sample(1.0, 0.9)                        # answered, no ground truth
        seg.record_sample(2.0, 0.8, 0.25)                  # answered, prediction error known
        seg.record_sample(3.0, 0.0, failed=True)           # a 5xx
        seg.record_sample(4.0, 0.7, 0.5, failed=True)      # both, counted in both totals
    dead.close()
    fleet = FleetReader(home)
    fleet.read_new()
    totals = fleet.totals()
    assert (totals.records, totals.failed, totals.error_count, totals.error_sum) == (8, 4, 4, 1.5)
    assert fleet.commit() == [dead.path.name]  # folded: its counts now come from the state file
    again = FleetReader(home).totals()
    assert (again.records, again.failed, again.error_count) == (8, 4, 4)
    live.close()
