"""Replicas on several machines (docs/DISTRIBUTED.md), simulated as several homes on this
machine sharing one bucket of moto's S3 server: each home has its own shared-memory segments
and control-plane lock; the lease and the spools are on the bucket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="s3fs (test extra) is needed to reach the S3 server")
pytest.importorskip("moto.server", reason="moto[server] (test extra) provides the S3 server")

pytestmark = pytest.mark.slow  # processes, a server, seconds of leases

from faults.harness import kill_at_random  # noqa: E402
from s3_support import S3_ENV, enable_versioning, object_versions, s3, s3_server  # noqa: E402, F401

from vortex.errors import CorruptFileError, SnapshotFormatError  # noqa: E402
from vortex.serving import ServiceSpec  # noqa: E402
from vortex.serving.control import ControlStandby  # noqa: E402
from vortex.serving.lease import LEASE_NAME, Lease, LeaseRecord  # noqa: E402
from vortex.serving.record_spool import RecordSpool  # noqa: E402
from vortex.serving.replica import SpoolMerger, SpoolWriter, spool_root  # noqa: E402
from vortex.shm import WorkerSegment  # noqa: E402
from vortex.shm.location import segment_dir  # noqa: E402
from vortex.training.buffer import Snapshot  # noqa: E402

DIM = 4
TTL = 6.0  # generous: a loaded 2-core machine must not make the holder miss its renewals here


def _attach(orch):
    from vortex import BackgroundTrainingConfig

    orch.with_background_trainer(BackgroundTrainingConfig(enabled=False, min_samples_for_training=10))


def _attach_watching(orch):
    """A trainer, a detector, and a change board keeping the answered requests' latencies."""
    _attach(orch)
    orch.with_runtime_detector()
    orch.changes.keep(2_000, ("latency_ms",))


def _spec(home, url, options, replica, **kw):
    return ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=DIM, n_classes=3,
                       factory_kwargs={"in_features": DIM, "out_features": 3}, fleet_url=url,
                       storage_options=options, replica_id=replica, lease_ttl_secs=TTL,
                       spool_interval_secs=0.2, **kw)


@pytest.fixture
def homes(tmp_path):
    """Three machines' homes; their segment directories are removed afterwards."""
    made = [tmp_path / name for name in ("a", "b", "c")]
    for h in made:
        h.mkdir()
    yield made
    for h in made:
        shutil.rmtree(segment_dir(h), ignore_errors=True)


def _push(segment, ids):
    for i in ids:
        segment.push(np.array([i, 0, 0, 0], np.float32), int(i) % 3, confidence=0.5, error=0.1,
                     timestamp=1_000.0 + i)


def _ids(snapshot):
    return sorted(int(v) for v in snapshot.features[:, 0])


def _spooled(url, options):
    from vortex.training.buffer import SampleBuffer

    try:
        return _ids(SampleBuffer.load(url, storage_options=options).snapshot())
    except FileNotFoundError:
        return None


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


_REPLICA = textwrap.dedent("""
    import json, os, sys, time
    os.environ.update({env})
    from vortex.serving import ServiceSpec
    from vortex.serving.control import ControlStandby
    spec = ServiceSpec(home={home!r}, model_factory="vortex.training.models:mlp", feature_dim={dim},
                       n_classes=3, factory_kwargs={{"in_features": {dim}, "out_features": 3}},
                       fleet_url={url!r}, storage_options=json.loads({options!r}), replica_id="b",
                       lease_ttl_secs={ttl}, spool_interval_secs=0.2)
    standby = ControlStandby(spec, interval=0.1)
    standby.start()
    while standby.lease is None:  # until it spools (the kill comes while it does)
        time.sleep(0.01)
    print("ready", flush=True)
    time.sleep({life})
""")


def _answer(segment, ids, latency=None):
    """Requests ``ids`` answered on ``segment``: latency 1 + id ms (or ``latency``), version 1
    or 2 by the id's parity."""
    for i in ids:
        segment.record_answer(1.0 + i if latency is None else latency, 0.5, int(i), 1 + int(i) % 2)


def test_samples_and_records_of_another_machine_reach_the_control_plane_once_across_kill9_of_its_spooler(s3, homes):
    url, options, fs = s3
    home_a, home_b, _ = homes
    a = ControlStandby(_spec(home_a, url, options, "a", configure=_attach_watching), interval=0.1)
    a.start()
    fed = threading.Event()
    n = 400
    try:
        assert a.acquired.wait(60) and a.lease.fencing == 1  # the first machine holds the fleet's lease
        segment = WorkerSegment.create(home_b, DIM)  # machine b's worker

        def feed():
            for start in range(0, n, 10):
                _answer(segment, range(start, start + 10))
                _push(segment, range(start, start + 10))  # pushed: acknowledged to the client
                time.sleep(0.05)
            fed.set()

        feeder = threading.Thread(target=feed)
        feeder.start()
        code = _REPLICA.format(env=S3_ENV, home=str(home_b), dim=DIM, url=url, options=json.dumps(options),
                               life=600, ttl=TTL)
        statuses = [kill_at_random(code, delay=(0.1, 1.2), ready="ready", seed=seed)[0] for seed in range(4)]
        feeder.join()
        assert statuses == [-9] * 4 and fed.is_set()
        assert _spooled(f"{spool_root(url)}/b.arrow", options) is not None  # the killed ones spooled
        code = _REPLICA.format(env=S3_ENV, home=str(home_b), dim=DIM, url=url, options=json.dumps(options),
                               life=8, ttl=TTL)
        kill_at_random(code, delay=(7.0, 7.0), ready="ready")  # b spools to the end
        trainer = a.plane.orchestrator.trainer
        _wait_for(lambda: len(trainer.buffer) >= n)
        time.sleep(1.0)  # a merge or two more: nothing doubled arrives late
        snap = trainer.buffer.snapshot()
        assert _ids(snap) == list(range(n))  # every acknowledged sample, once
        assert np.all(np.diff(snap.timestamp) >= 0)  # merged in timestamp order
        ack = json.loads(fs.cat_file(f"{spool_root(url)}/b.merged"))
        assert ack["next_seq"] == n  # b's spool numbered each sample once
        # b's request records, each once, in a's detector, tracker and change board (a has no
        # worker of its own: everything they hold came from b)
        orch = a.plane.orchestrator
        _wait_for(lambda: orch.detector.total_samples >= n)
        time.sleep(1.0)
        assert orch.detector.total_samples == n and orch.tracker.summary()["modes"]["fleet"]["count"] == n
        for version in (1, 2):  # the board's figures of each answering version
            assert sorted(orch.changes.recent("latency_ms", 2 * n, version=version)) == [
                1.0 + i for i in range(n) if 1 + i % 2 == version]
        assert a.plane.counts["remote_records"] == n
        assert json.loads(fs.cat_file(f"{spool_root(url)}/records/b.merged"))["next_seq"] == n
        segment.close()
    finally:
        a.stop()
    assert a.plane is None and _ids(Snapshot.read_ipc(home_a / "buffer.arrow")) == list(range(n))  # saved


def test_a_spooler_killed_between_its_save_and_its_commit_spools_nothing_twice(s3, homes):
    url, options, fs = s3
    spec = _spec(homes[1], url, options, "b")
    with WorkerSegment.create(homes[1], DIM) as segment:
        _push(segment, range(30))
        first = SpoolWriter(spec)
        assert first.pump() == 30
        first.fleet.commit = lambda: []  # the process dies right after the spool object is written
        first.flush()
        first.fleet.close()
        _push(segment, range(30, 35))
        again = SpoolWriter(spec)  # restarted: the segments are re-read from the old cursors
        assert again.pump() == 5 and again.counts["skipped_duplicates"] == 30
        again.flush()
        again.fleet.close()
    saved = SpoolWriter(spec)
    assert _ids(saved.buffer.snapshot()) == list(range(35)) and saved.buffer.next_seq == 35
    saved.fleet.close()


def test_a_machine_whose_spooler_died_before_its_commit_then_takes_the_lease_doubles_nothing(s3, homes):
    """Its next lock holder spools first (skipping what the spool holds, then committing), and
    only then runs the control plane, which reads the segments from the committed cursors."""
    url, options, _ = s3
    spec = _spec(homes[0], url, options, "a", configure=_attach)
    with WorkerSegment.create(homes[0], DIM) as segment:
        _push(segment, range(30))
        dead = SpoolWriter(spec)
        dead.pump()
        dead.fleet.commit = lambda: []  # killed after writing the spool, before the commit
        dead.flush()
        dead.fleet.close()
        a = ControlStandby(spec, interval=0.1)
        a.start()
        try:
            assert a.acquired.wait(60)
            _push(segment, range(30, 40))  # read by the control plane itself
            trainer = a.plane.orchestrator.trainer
            _wait_for(lambda: len(trainer.buffer) >= 40)
            time.sleep(1.0)
            assert _ids(trainer.buffer.snapshot()) == list(range(40))
        finally:
            a.stop()


class _Trainer:
    """The merge's only needs of a trainer (a real one is tested above)."""

    def __init__(self):
        from vortex.training.buffer import SampleBuffer

        self.buffer = SampleBuffer(DIM, 1000)

    def add_samples(self, features, labels, **columns):
        return self.buffer.extend(features, labels, **columns)

    def persist_buffer_covering(self):
        return True


def test_a_damaged_spool_is_named_and_skipped_and_the_others_merge(s3, homes):
    url, options, fs = s3
    writers = {}
    for home, replica, ids in ((homes[1], "b", range(0, 20)), (homes[2], "c", range(100, 120))):
        spec = _spec(home, url, options, replica)
        segment = WorkerSegment.create(home, DIM)
        _push(segment, ids)
        writers[replica] = SpoolWriter(spec)
        writers[replica].pump()
        writers[replica].flush()
        segment.close()
    spool_c = f"{spool_root(url)}/c.arrow"
    data = bytearray(fs.cat_file(spool_c))
    data[len(data) // 3] ^= 0x20
    fs.pipe_file(spool_c, bytes(data))

    trainer = _Trainer()
    merger = SpoolMerger(_spec(homes[0], url, options, "a"), trainer)
    assert merger.merge() == 20
    assert _ids(trainer.buffer.snapshot()) == list(range(20))
    problem = merger.problems["c"]
    assert isinstance(problem, SnapshotFormatError) and isinstance(problem, CorruptFileError)
    assert "c.arrow" in str(problem)
    assert merger.merge() == 0  # nothing new; c still skipped, b not merged twice
    successor = SpoolMerger(_spec(homes[0], url, options, "a"), trainer)  # a control plane elected anew
    assert successor.merge() == 0 and len(trainer.buffer) == 20  # b's watermark is on the bucket
    # b's writer drops what was merged from its spool (the watermark), and spools on
    writers["b"].flush()
    assert len(writers["b"].buffer) == 0 and writers["b"].counts["trimmed"] == 20
    for w in writers.values():
        w.fleet.close()


def test_a_latency_spike_recorded_only_on_another_machine_raises_the_control_planes_latency_weakness(s3, homes):
    from vortex.monitor.weaknesses import WeaknessType

    url, options, _ = s3
    a = ControlStandby(_spec(homes[0], url, options, "a", configure=_attach_watching), interval=0.1)
    a.start()
    try:
        assert a.acquired.wait(60)
        detector = a.plane.orchestrator.detector
        with WorkerSegment.create(homes[0], DIM) as local:
            _answer(local, range(100), latency=5.0)  # a's own requests: fast
            _wait_for(lambda: detector.total_samples >= 100)
        assert WeaknessType.LATENCY_SPIKE not in {w.type for w in detector.assess()}
        b = SpoolWriter(_spec(homes[1], url, options, "b"))
        with WorkerSegment.create(homes[1], DIM) as remote:
            _answer(remote, range(100, 130), latency=900.0)  # b's: over the 500 ms threshold
            b.pump()
            b.flush()
        b.fleet.close()
        _wait_for(lambda: WeaknessType.LATENCY_SPIKE in {w.type for w in detector.assess()}, timeout=30)
        assert detector.total_samples == 130
    finally:
        a.stop()


class _Records:
    """A merger's ``records`` callback that keeps what it is given."""

    def __init__(self):
        self.latency, self.versions = [], []

    def __call__(self, latency_ms, confidence, version):
        self.latency += latency_ms.tolist()
        self.versions += version.tolist()


def test_records_beyond_the_spools_capacity_while_no_control_plane_merges_drop_the_oldest_and_count_them(s3, homes):
    url, options, fs = s3
    spec = _spec(homes[1], url, options, "b")
    writer = SpoolWriter(spec, records_capacity=50)
    with WorkerSegment.create(homes[1], DIM) as segment:
        for start in (0, 40, 80):  # three spool intervals, no merger
            _answer(segment, range(start, start + 40))
            writer.pump()
            writer.flush()
        saved = RecordSpool.load(f"{spool_root(url)}/records/b.arrow", storage_options=options)
        assert len(saved) == 50 and saved.capacity == 50  # the stored object is bounded too
        got = _Records()
        merger = SpoolMerger(_spec(homes[0], url, options, "a"), None, records=got)
        merger.merge()
        assert got.latency == [1.0 + i for i in range(70, 120)]  # the newest arrive, in order
        assert got.versions == [1 + i % 2 for i in range(70, 120)]
        assert merger.counts["records_lost"] == 70 and merger.counts["records_merged"] == 50
        writer.flush()  # b drops what was merged
        assert writer.record_counts["trimmed"] == 50 and len(writer.records.buffer) == 0
        _answer(segment, range(120, 125))  # merged from here on: nothing more is lost
        writer.pump()
        writer.flush()
        merger.merge()
        assert got.latency[50:] == [1.0 + i for i in range(120, 125)] and merger.counts["records_lost"] == 70
    writer.fleet.close()


def test_a_damaged_record_spool_is_named_and_the_sample_spool_still_merges(s3, homes):
    url, options, fs = s3
    writer = SpoolWriter(_spec(homes[1], url, options, "b"))
    with WorkerSegment.create(homes[1], DIM) as segment:
        _push(segment, range(20))
        _answer(segment, range(20))
        writer.pump()
        writer.flush()
    writer.fleet.close()
    spool = f"{spool_root(url)}/records/b.arrow"
    data = bytearray(fs.cat_file(spool))
    data[len(data) // 2] ^= 0x04
    fs.pipe_file(spool, bytes(data))

    got, trainer = _Records(), _Trainer()
    merger = SpoolMerger(_spec(homes[0], url, options, "a"), trainer, records=got)
    assert merger.merge() == 20 and _ids(trainer.buffer.snapshot()) == list(range(20))
    problem = merger.problems["records/b"]
    assert isinstance(problem, SnapshotFormatError) and "records/b.arrow" in str(problem)
    assert got.latency == [] and "b" not in merger.problems
    assert not fs.exists(f"{spool_root(url)}/records/b.merged")  # nothing merged: no watermark


def test_a_control_plane_that_loses_the_lease_stops_and_its_machine_spools_again(s3, homes):
    url, options, fs = s3
    a = ControlStandby(_spec(homes[0], url, options, "a", configure=_attach), interval=0.1)
    a.start()
    try:
        assert a.acquired.wait(60) and a.role == "control"
        plane = a.plane
        now = [0.0]
        thief = Lease(url, options, ttl_secs=TTL, clock=lambda: now[0])  # a machine with a fast clock
        assert not thief.try_acquire()
        now[0] += 100.0
        assert thief.try_acquire() and thief.fencing == 2
        _wait_for(lambda: a.plane is None and not a.acquired.is_set(), timeout=30)
        assert plane._thread is not None and not plane._thread.is_alive()  # its pump stopped
        assert "taken over" in (a.lease.lost_reason or "")
        # machine a's standby holds its lock again, as a spooler: its samples go to its spool
        with WorkerSegment.create(homes[0], DIM) as segment:
            _push(segment, range(7))
            _wait_for(lambda: thief.renew() and _spooled(f"{spool_root(url)}/a.arrow", options) == list(range(7)),
                      timeout=30)  # (the thief renews meanwhile, as a live holder does)
        record = LeaseRecord.parse(fs.cat_file(f"{url}/{LEASE_NAME}"), LEASE_NAME)
        assert (record.token, record.fencing) == (thief.token, 2)  # a never took it back
        assert a.role == "spool"
    finally:
        a.stop()


_HOLDER = textwrap.dedent("""
    import json, os, sys, time
    os.environ.update({env})
    from vortex.serving import ServiceSpec
    from vortex.serving.control import ControlStandby
    spec = ServiceSpec(home={home!r}, model_factory="vortex.training.models:mlp", feature_dim={dim},
                       n_classes=3, factory_kwargs={{"in_features": {dim}, "out_features": 3}},
                       fleet_url={url!r}, storage_options=json.loads({options!r}), replica_id={replica!r},
                       lease_ttl_secs={ttl}, spool_interval_secs=0.2)
    standby = ControlStandby(spec, interval=0.1)
    standby.start()
    out = open({log!r}, "a", buffering=1)
    running = False
    while True:  # what this process runs, as it changes
        plane = standby.plane
        if (plane is not None and plane._thread is not None and plane._thread.is_alive()) != running:
            running = not running
            lease = standby.lease
            out.write(json.dumps({{"t": time.time(), "plane": running, "token": lease.token,
                                  "fencing": lease.fencing, "reason": lease.lost_reason}}) + "\\n")
            os.fsync(out.fileno())
        time.sleep(0.02)
""")


def test_a_stopped_control_plane_finds_its_lease_lost_and_stops_without_writing_it_again(s3, homes, tmp_path):
    url, options, _ = s3
    enable_versioning(options, url)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b")}

    def start(name, home):
        code = _HOLDER.format(env=S3_ENV, home=str(home), dim=DIM, url=url, options=json.dumps(options),
                              replica=name, ttl=TTL, log=str(logs[name]))
        return subprocess.Popen([sys.executable, "-c", code], env=env)

    def events(name):
        return [json.loads(line) for line in logs[name].read_text().splitlines()] if logs[name].exists() else []

    a = start("a", homes[0])
    b = None
    try:
        _wait_for(lambda: events("a"), timeout=120)
        b = start("b", homes[1])
        time.sleep(3.0)  # b is up, spooling, watching a's lease
        os.kill(a.pid, signal.SIGSTOP)
        stopped = time.time()
        _wait_for(lambda: events("b"), timeout=120)
        time.sleep(1.0)
        os.kill(a.pid, signal.SIGCONT)
        _wait_for(lambda: len(events("a")) == 2, timeout=60)
        time.sleep(TTL / 2)  # time for a to write the lease again, were it to
    finally:
        for p in (a, b):
            if p is not None:
                p.kill()
                p.wait(10)
    (up, down), (b_up,) = events("a"), events("b")
    assert up["plane"] and up["fencing"] == 1 and b_up["plane"] and b_up["fencing"] == 2
    assert not down["plane"] and "deadline" in down["reason"] and down["t"] > b_up["t"] > stopped
    tokens = [LeaseRecord.parse(data, "lease").token for data in object_versions(options, f"{url}/{LEASE_NAME}")]
    first_b = tokens.index(b_up["token"])
    assert up["token"] in tokens[:first_b] and up["token"] not in tokens[first_b:]


@pytest.mark.parametrize("field, value", [("fleet_url", "/local/dir"), ("replica_id", "a/b"), ("replica_id", ""),
                                          ("lease_ttl_secs", 0), ("spool_interval_secs", -1.0),
                                          ("lease_ttl_secs", True)])
def test_bad_fleet_settings_name_their_field(tmp_path, field, value):
    from vortex.errors import ConfigError

    kwargs = {"fleet_url": "s3://bucket/fleet", field: value}
    with pytest.raises(ConfigError, match=f"ServiceSpec.{field}="):
        ServiceSpec(home=str(tmp_path), model_factory="m:f", feature_dim=2, n_classes=2, **kwargs)
    spec = ServiceSpec(home=str(tmp_path), model_factory="m:f", feature_dim=2, n_classes=2)
    assert spec.fleet_url is None and spec.replica  # the host name, made a valid replica id
