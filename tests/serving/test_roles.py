"""The pieces of the roles, across real processes: the pending ring (feedback for a request
answered by another process), and the control-plane lock (one holder; free once it is killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from vortex.errors import UnknownRequestError
from vortex.serving.control import ControlLock
from vortex.serving.pending import PendingFinder, PendingRing, remove_dead_rings
from vortex.shm.location import segment_dir

# the children import the vortex this test imported (the built source tree here, the installed
# package in CI: never the source tree ahead of it, whose compiled modules may not be built)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from vortex.serving.pending import PendingRing
    ring = PendingRing(sys.argv[1], 4, 3, capacity=16)
    for i in range(int(sys.argv[2])):
        ring.add(f"req-{i}", np.full(4, i, np.float32), 7, 0.25, float(i % 3), (0.25, 0.5, 0.25))
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes stdin or kills this process
    ring.close()
""")


def _writer(home, n):
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(home), str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_request_answered_by_another_process_is_found_whole_and_taken_once(home):
    proc = _writer(home, 20)
    try:
        finder = PendingFinder(home, ttl_secs=60)
        entry = finder.take("req-19")
        assert entry.version == 7 and entry.confidence == 0.25 and entry.output == 1.0
        assert entry.features.tolist() == [19.0] * 4 and entry.probabilities.tolist() == [0.25, 0.5, 0.25]
        with pytest.raises(UnknownRequestError, match="already has its feedback"):
            finder.take("req-19")
        with pytest.raises(UnknownRequestError, match="unknown"):  # evicted: the ring keeps 16
            finder.take("req-3")
        finder.give_back("req-19")  # a feedback refused after the take
        assert finder.take("req-19").features[0] == 19.0
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()
    # after a clean exit (a rolling restart) its requests are still answerable
    assert PendingFinder(home, ttl_secs=60).take("req-18").features[0] == 18.0


def test_a_killed_workers_requests_stay_answerable_until_their_ttl(home):
    proc = _writer(home, 5)
    proc.kill()
    proc.wait(10)
    proc.stdin.close()
    proc.stdout.close()
    assert PendingFinder(home, ttl_secs=60).take("req-4").features[0] == 4.0
    assert remove_dead_rings(home, ttl_secs=60) == []  # still within its ttl
    removed = remove_dead_rings(home, ttl_secs=0)
    assert len(removed) == 1 and not any(n.startswith("pending-") for n in os.listdir(segment_dir(home)))


def test_a_slot_being_written_is_never_returned(home):
    ring = PendingRing(home, 4, 3, capacity=4)
    ring.add("a", np.ones(4, np.float32), 1, 0.5, 0.0, (0.5, 0.25, 0.25))
    ring._slots["seq"][0] = 3  # the writer is between its two seq stores
    with pytest.raises(UnknownRequestError):
        PendingFinder(home, ttl_secs=60).take("a")
    ring._slots["seq"][0] = 2
    assert PendingFinder(home, ttl_secs=60).take("a").features.tolist() == [1.0] * 4
    ring.close()


def test_the_ring_takes_any_feature_row_kind_and_refuses_bad_shapes_without_writing(home):
    import torch

    ring = PendingRing(home, 4, 3, capacity=8)
    rows = {"f32": np.arange(4, dtype=np.float32), "f64": np.arange(4.0), "list": [0, 1, 2, 3],
            "tensor": torch.arange(4.0), "strided": np.arange(8, dtype=np.float32)[::2] / 2}
    for name, row in rows.items():
        ring.add(name, row, None, 0.5, 2.0, (0.2, 0.3, 0.5))
    for bad, words in [(np.zeros(5, np.float32), "features has 5 values"),
                       (np.zeros(3), "features has 3 values")]:
        with pytest.raises(ValueError, match=words):
            ring.add("bad", bad, 1, 0.5, 0.0, (0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="probabilities has 2 values"):
        ring.add("bad", np.zeros(4, np.float32), 1, 0.5, 0.0, (0.5, 0.5))
    assert ring._writer.written == len(rows)  # the refused ones took no slot
    finder = PendingFinder(home, ttl_secs=60)
    for name in rows:
        entry = finder.take(name)
        assert entry.features.tolist() == [0.0, 1.0, 2.0, 3.0] and entry.version is None
        assert entry.probabilities.tolist() == [0.2, 0.3, 0.5] and entry.output == 2.0
    with pytest.raises(UnknownRequestError):
        finder.take("bad")
    ring.close()


def test_threads_writing_one_ring_leave_every_entry_whole(home):
    ring = PendingRing(home, 4, 3, capacity=4096)

    def write(t):
        for i in range(500):
            v = float(t * 1000 + i)
            ring.add(f"{t}-{i}", np.full(4, v, np.float32), t, 0.5, v, (v, v, v))

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = np.sort(ring._slots["seq"][:2000])
    assert seqs.tolist() == [2 * n + 2 for n in range(2000)]  # each record number once, complete
    finder = PendingFinder(home, ttl_secs=60)
    for t in range(4):
        for i in (0, 499):
            v = float(t * 1000 + i)
            entry = finder.take(f"{t}-{i}")
            assert entry.version == t and entry.features.tolist() == [v] * 4 and entry.output == v
    ring.close()


_HOLDER = "import sys, time; from vortex.serving.control import ControlLock; " \
          "assert ControlLock(sys.argv[1]).try_acquire(); print('held', flush=True); time.sleep(600)"


def test_one_control_plane_per_home_and_the_role_is_free_once_its_holder_is_killed(home):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(home)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = ControlLock(home)
        assert not mine.try_acquire() and not mine.held
        with open(mine.path) as f:
            assert int(f.read()) == holder.pid  # who holds it, for a person reading the home
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while not mine.try_acquire():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ControlLock(home).try_acquire() is False  # another object, same process: refused
        mine.release()
        assert ControlLock(home).try_acquire()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        holder.stdout.close()


@pytest.mark.parametrize("spec,words", [("no_such_module:SPEC", "cannot be imported"),
                                        ("vortex.serving.spec:ServiceSpec", "missing"),
                                        ("os:sep", "not a ServiceSpec"), ("nocolon", "package.module:NAME")])
def test_vortex_control_refuses_a_bad_spec_in_one_line_and_touches_no_home(tmp_path, spec, words):
    out = subprocess.run([sys.executable, "-c", "import sys; from vortex.cli import main; sys.exit(main())",
                          "control", "--spec", spec, "--home", str(tmp_path / "h")],
                         check=False, capture_output=True, text=True, env=ENV, timeout=60)
    assert out.returncode in (1, 2), out
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vortex control: error:") and words in lines[0], out.stderr
    assert not (tmp_path / "h").exists()


def _attach(orch):
    from vortex import BackgroundTrainingConfig, RuntimeDetectorConfig

    orch.with_runtime_detector(RuntimeDetectorConfig(window_size=100))
    orch.with_background_trainer(BackgroundTrainingConfig(enabled=False, min_samples_for_training=10))


def test_the_control_plane_feeds_every_workers_records_to_its_detector_and_samples_to_its_buffer(home):
    from vortex.serving import ControlPlane, ServiceSpec, ServingWorker
    from vortex.training.buffer import Snapshot

    spec = ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=4,
                       n_classes=3, factory_kwargs={"in_features": 4, "out_features": 3}, configure=_attach)
    plane = ControlPlane(spec)  # not started: the test drives its pump
    worker = ServingWorker(spec)
    worker.start()
    try:
        rng = np.random.default_rng(0)
        answers = [worker.infer(rng.random(4).astype(np.float32)) for _ in range(10)]
        errors = [worker.feedback(a.request_id, i % 3, episode=100 + i) for i, a in enumerate(answers[:4])]
        assert plane.pump() == 14
        detector, trainer = plane.orchestrator.detector, plane.orchestrator.trainer
        assert detector.total_samples == 10
        assert detector.stats().recent_prediction_error == pytest.approx(np.mean(errors))
        assert len(trainer.buffer) == 4
        plane.commit()
        saved = Snapshot.read_ipc(home / "buffer.arrow")
        assert sorted(saved.episode.tolist()) == [100, 101, 102, 103]
        assert saved.error.tolist() == pytest.approx(errors)
        assert plane.pump() == 0  # read once; the committed cursors hold
        plane.publish()
        status = json.loads((home / "control.json").read_text())
        assert status["control"]["records"] == 10 and status["control"]["samples"] == 4
        assert [w["pid"] for w in status["workers"]] == [os.getpid()]
    finally:
        worker.stop()
        plane.stop()
