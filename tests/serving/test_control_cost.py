"""What the control plane costs the process it runs in: it publishes its status often only
while someone reads it (watched from outside: the file's inode, which every atomic write
replaces), reads the segments less often while they bring nothing, and its threads run at the
priority asked (read back from ``/proc/<pid>/task/<tid>/stat``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from proc_support import autogroup

from vortex.serving import ControlPlane, ServiceSpec, VortexService, want_status


def _attach(orch):
    from vortex import RuntimeDetectorConfig

    orch.with_runtime_detector(RuntimeDetectorConfig(window_size=100))


def _spec(home) -> ServiceSpec:
    return ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=4,
                       n_classes=3, factory_kwargs={"in_features": 4, "out_features": 3},
                       configure=_attach)


def _publications(path: str, seconds: float) -> int:
    """Distinct versions of ``path`` seen over ``seconds`` (sampled every 2 ms), the one there at
    the start included.
    """
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            st = os.stat(path)
            seen.add((st.st_ino, st.st_mtime_ns))
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return len(seen)


def test_the_status_is_published_often_only_while_it_is_read(home):
    plane = ControlPlane(_spec(home), poll_interval=0.01, idle_poll_interval=0.1, publish_interval=0.05,
                         idle_publish_interval=60.0)
    status = plane.layout.control_status
    plane.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(status):  # the first pass publishes once
            assert time.monotonic() < deadline, "the control plane published nothing"
            time.sleep(0.01)
        assert _publications(status, 1.0) == 1  # nobody reads it: no more than that one
        want_status(home)  # a reader: every 0.05 s from the next pass on
        assert _publications(status, 1.0) >= 5
        wanted = status + ".wanted"
        past = time.time() - 60
        os.utime(wanted, (past, past))  # the last read a minute ago: back to the idle pace
        time.sleep(0.5)  # a pass under way (slow on a busy machine) may still publish once
        assert _publications(status, 1.0) == 1
    finally:
        plane.stop()


def test_a_worker_reading_the_status_marks_it_wanted_at_most_once_a_second(home):
    service = VortexService(_spec(home), control="never")
    service.start()
    try:
        wanted = service.running.layout.control_status + ".wanted"
        before = time.time_ns()
        assert service.control_status() is None  # nothing published yet; the interest is marked
        assert os.stat(wanted).st_mtime_ns >= before - 10_000_000  # (file times are coarse)
        past = time.time_ns() - 60 * 10**9
        os.utime(wanted, ns=(past, past))
        service.control_status()  # within the second: not marked again
        assert os.stat(wanted).st_mtime_ns == past
    finally:
        service.stop()


def test_the_pump_reads_less_often_while_the_workers_bring_nothing(home):
    from vortex.serving import ServingWorker

    spec = _spec(home)
    plane = ControlPlane(spec, poll_interval=0.01, idle_poll_interval=0.4)
    passes: list[int] = []
    pump = plane.pump

    def counted() -> int:
        n = pump()
        passes.append(n)
        return n

    plane.pump = counted  # type: ignore[method-assign]
    worker = ServingWorker(spec)
    worker.start()
    plane.start()
    try:
        time.sleep(2.0)
        idle = len(passes)
        assert 3 <= idle <= 20  # 200 at the busy pace; 0.01, 0.02, ... 0.32, then 0.4 s apart
        deadline = time.monotonic() + 1.0
        x = [0.5, 0.25, 0.125, 0.0625]
        while time.monotonic() < deadline:  # requests keep coming: back to the busy pace
            worker.infer(x)
            time.sleep(0.001)
        busy = passes[idle:]
        assert len(busy) >= 30 and sum(busy) == plane.counts["records"]
    finally:
        plane.stop()
        worker.stop()


def _nice_of(pid: int, tid: int) -> int | None:
    """The niceness of thread ``tid`` of ``pid``, as the kernel reports it (field 19); None for
    a thread that ended since it was listed (short-lived threads come and go)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_control_planes_threads_run_at_the_standbys_lowered_priority(home):
    from vortex.serving import ControlStandby

    main = threading.get_native_id()
    base = _nice_of(os.getpid(), main)
    standby = ControlStandby(_spec(home), nice=5)
    standby.start()
    try:
        assert standby.acquired.wait(60)
        plane = standby.plane
        # (the standby's own thread ends once the plane is started)
        threads = {"pump": plane._thread, "detector": plane.orchestrator.detector._thread}
        for name, thread in threads.items():
            assert _nice_of(os.getpid(), thread.native_id) == min(19, base + 5), name
        assert _nice_of(os.getpid(), main) == base  # the serving threads keep theirs
    finally:
        standby.stop()


@pytest.mark.parametrize("nice", [-1, 20, True, 2.5])
def test_a_niceness_that_is_not_a_lowering_is_refused_naming_it(home, nice):
    from vortex.serving import ControlStandby

    with pytest.raises(ValueError, match=f"nice={nice!r}"):
        ControlStandby(_spec(home), nice=nice)
    with pytest.raises(ValueError, match=f"nice={nice!r}"):
        VortexService(_spec(home), control_nice=nice)


_SPEC_MODULE = """
from vortex import RuntimeDetectorConfig
from vortex.serving import ServiceSpec

def attach(orch):
    orch.with_runtime_detector(RuntimeDetectorConfig(window_size=100))

SPEC = ServiceSpec(home={home!r}, model_factory="vortex.training.models:mlp", feature_dim=4,
                   n_classes=3, factory_kwargs={{"in_features": 4, "out_features": 3}},
                   configure=attach)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_sidecars_control_plane_runs_lowered_and_its_main_thread_does_not(home, tmp_path):
    (tmp_path / "sidecar_spec.py").write_text(_SPEC_MODULE.format(home=str(home)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]))
    proc = subprocess.Popen([sys.executable, "-m", "vortex", "control", "--spec", "sidecar_spec:SPEC",
                             "--nice", "7"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert "waiting" in proc.stdout.readline()
        assert "holding" in proc.stdout.readline()
        tasks = os.listdir(f"/proc/{proc.pid}/task")
        lowered = [t for t in tasks if _nice_of(proc.pid, int(t)) == 7]
        # the pump and the detector's monitor at least; the main thread not
        assert len(lowered) >= 2 and str(proc.pid) not in lowered, (tasks, lowered)
        assert _nice_of(proc.pid, proc.pid) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        proc.stdout.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="kernel without autogroups")
@pytest.mark.parametrize("session", ["own", "shared"])
def test_a_sidecar_leading_its_session_lowers_its_autogroup_and_only_then(home, tmp_path, session):
    """Started in a session of its own (as a service manager does), the sidecar sets its
    autogroup's nice to its own ``--nice``: otherwise its group competes with the serving
    processes' as an equal. In the session of the process that started it, it leaves the
    shared group alone."""
    (tmp_path / "sidecar_spec.py").write_text(_SPEC_MODULE.format(home=str(home)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *(p for p in sys.path if p)]))
    ours = autogroup("self")
    proc = subprocess.Popen([sys.executable, "-m", "vortex", "control", "--spec", "sidecar_spec:SPEC",
                             "--nice", "7"], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=session == "own")
    try:
        assert "waiting" in proc.stdout.readline()
        group = autogroup(proc.pid)
        if session == "own":
            assert group is not None and group[1] == 7 and (ours is None or group[0] != ours[0])
        else:  # ours may be the kernel's default group (None), under some CI runners
            assert group == ours
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        proc.stdout.close()
    assert autogroup("self") == ours
