"""Writers and readers in separate processes: concurrent writers, a reader lapped by its
writers, and writers killed with SIGKILL at random moments, many times."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import naive
import shm_support as s
from vortex.shm import FleetReader, SegmentReader

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "faults"))
from harness import _child_env, kill_at_random  # noqa: E402

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("VORTEX_KILLS", "30"))


def _start_writers(home, count, n, window, ring):
    procs = [subprocess.Popen([sys.executable, "-c", s.writer_code(home, n, window, ring)],
                              stdout=subprocess.PIPE, text=True, env=_child_env())
             for _ in range(count)]
    for p in procs:  # each prints its path, then "ready"
        assert p.stdout.readline().strip().endswith(".seg")
        assert p.stdout.readline().strip() == "ready"
    return procs


def _finish(procs):
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out


def test_concurrent_writers_every_record_is_read_once_and_whole(home):
    """Three writers, 30,000 records and samples each, while this process reads: every record
    exactly once, equal to what was written; the merged histograms are those of the union."""
    n, writers = 30_000, 3
    procs = _start_writers(home, writers, n, window=1 << 16, ring=1 << 15)
    fleet = FleetReader(home)
    seen_m: dict[str, list] = {}
    seen_s: dict[str, list] = {}
    reads = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = all(p.poll() is not None for p in procs)
        batch = fleet.read_new(max_per_worker=4096)
        reads += 1
        for name, recs in batch.metrics.items():
            s.check_metrics(recs)
            assert recs.lost == 0
            seen_m.setdefault(name, []).extend(recs.index.tolist())
        for name, rows in batch.samples.items():
            s.check_samples(rows)
            assert rows.lost == 0
            seen_s.setdefault(name, []).extend(rows.seq.tolist())
        if done and len(seen_m) == writers and all(len(v) == n for v in (*seen_m.values(), *seen_s.values())):
            break
    _finish(procs)
    assert reads > writers  # the reads really overlapped the writing
    assert len(seen_m) == writers
    for name in seen_m:
        assert seen_m[name] == list(range(n)), name
        assert seen_s[name] == list(range(n)), name
    lat, conf = fleet.histograms()
    np.testing.assert_array_equal(lat.counts, writers * naive.log_histogram(s.latency_seconds(n)))
    np.testing.assert_array_equal(conf.counts, writers * naive.log_histogram(s.confidences(n)))
    assert not any(w.alive for w in fleet.workers())
    assert len(fleet.commit()) == writers
    assert fleet.retired_workers == writers
    assert fleet.histograms()[0] == lat  # folding keeps every count
    assert sorted(os.listdir(fleet.directory)) == ["fleet-state.json"]
    fleet.close()


def test_a_lapped_reader_reports_exactly_what_it_lost(home):
    """Tiny rings: the writer laps the reader again and again; what is read is whole and in
    order, and read + lost is exactly what was written."""
    n = 100_000
    procs = _start_writers(home, 1, n, window=64, ring=32)
    fleet = FleetReader(home)
    name = None
    got_m, got_s, lost_m, lost_s = [], [], 0, 0
    while True:
        done = procs[0].poll() is not None
        batch = fleet.read_new()
        for name, recs in batch.metrics.items():
            s.check_metrics(recs)
            got_m.extend(recs.index.tolist())
            lost_m += recs.lost
        for name, rows in batch.samples.items():
            s.check_samples(rows)
            got_s.extend(rows.seq.tolist())
            lost_s += rows.lost
        if done and fleet.workers() and fleet.workers()[0].unread_records == 0:
            break
    _finish(procs)
    batch = fleet.read_new()
    got_m.extend(batch.metrics[name].index.tolist())
    got_s.extend(batch.samples[name].seq.tolist())
    assert lost_m > 0 and lost_s > 0  # the reader was lapped
    assert got_m == sorted(set(got_m)) and got_s == sorted(set(got_s))
    assert len(got_m) + lost_m == n and len(got_s) + lost_s == n
    assert got_m[-1] == n - 1 and got_s[-1] == n - 1
    totals = fleet.totals()
    assert totals.records == n and totals.latency.count == n  # the histograms lose nothing
    fleet.close()


def test_writers_killed_mid_write_leave_everything_up_to_their_last_record(home):
    """SIGKILL at a random moment, KILLS times: the dead writer's segment passes the whole-file
    check, holds every acknowledged record, whole and in order up to its last complete one, and
    its histograms and sums are exactly those of records 0 .. last (crash states in between are
    reconciled, never torn)."""
    window = ring = 1 << 12
    outcomes = dict.fromkeys(["record begun", "torn record", "record completed, unpublished",
                              "torn sample", "sample completed, unpublished"], 0)
    for k in range(KILLS):
        code, out = kill_at_random(s.writer_code(home, 10_000_000, window, ring), delay=(0.0, 0.15),
                                   seed=k, ready="ready")
        assert code == -9, out
        path = out.splitlines()[0]
        acked = max(map(int, re.findall(r"^ack (\d+)$", out, re.MULTILINE)), default=0)
        with SegmentReader(path) as reader:
            assert not reader.alive()
            totals = reader.totals()
            begun, published, pushed, closed = reader._reader.counters()
            n = totals.records
            assert not closed and n >= acked and totals.samples in (n - 1, n)  # killed between the two
            got = reader.read_metrics()
            rows = reader.read_samples()
            # the ring keeps the newest `window` records, one fewer if the kill tore a slot (the
            # record being written had already destroyed the oldest)
            torn = (got.lost - max(0, n - window), rows.lost - max(0, totals.samples - ring))
            assert torn[0] in (0, 1) and torn[1] in (0, 1)
            assert got.index.tolist() == list(range(got.lost, n))
            assert rows.seq.tolist() == list(range(rows.lost, totals.samples))
            s.check_metrics(got)
            s.check_samples(rows)
            outcomes["torn record"] += torn[0]
            outcomes["torn sample"] += torn[1]
            outcomes["record completed, unpublished"] += n == published + 1
            outcomes["sample completed, unpublished"] += totals.samples == pushed + 1
            outcomes["record begun"] += begun == published + 1
            lat = s.latency_seconds(n)
            np.testing.assert_array_equal(totals.latency.counts, naive.log_histogram(lat))
            np.testing.assert_array_equal(totals.confidence.counts, naive.log_histogram(s.confidences(n)))
            assert totals.latency.total == s.sequential_sum(lat)
            assert reader.at_end()
        os.unlink(path)
    print(f"{KILLS} kills: {outcomes}")
