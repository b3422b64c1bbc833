"""The training fork server, tried from outside: the process table, the files, the results.

A forked worker must be indistinguishable from a fresh interpreter in what it computes and in
how it can be stopped, and the server must never outlive the process that started it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from proc_support import alive, autogroup, proc_stat
from safetensors.torch import load_file

from vortex.config import BackgroundTrainingConfig
from vortex.errors import TrainingError
from vortex.training import SampleBuffer, forkserver
from vortex.training.forkserver import ForkedWorker
from vortex.training.launcher import WorkerLauncher, worker_env
from vortex.training.worker import CANDIDATE_FILE, RESULT_FILE

KW = {"in_features": 8, "hidden": 16, "out_features": 3, "seed": 3}
FACTORY = "vortex.training.models:mlp"


def _snapshot(path, n=360):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    buf = SampleBuffer(8, capacity=1000)
    buf.extend(x, y, episodes=np.arange(n) // 10)
    buf.snapshot().write_ipc(str(path))
    return str(path)


def _launcher(tmp_path, factory=FACTORY, kwargs=KW, **config) -> WorkerLauncher:
    cfg = BackgroundTrainingConfig(**{"num_epochs": 3, "batch_size": 24, "worker_nice": 0, **config})
    return WorkerLauncher(lambda: cfg, factory, kwargs, str(tmp_path / "models"), threading.Event())


def _policy(pid: int) -> int:
    with open(f"/proc/{pid}/sched") as f:
        return int(next(line for line in f if line.startswith("policy")).split(":")[1])


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout  # a bound on liveness, not a speed measurement
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _run_in_thread(launcher, out, snap, world=1):
    outcome: dict = {}

    def go():
        try:
            launcher.run(str(out), snap, None, world, run_id=0)
            outcome["ok"] = True
        except Exception as exc:
            outcome["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    return t, outcome


@pytest.mark.slow
def test_a_forked_worker_trains_exactly_as_a_fresh_interpreter(tmp_path):
    snap = _snapshot(tmp_path / "snap.arrow")
    outs = {}
    for fork in (False, True):
        launcher = _launcher(tmp_path, fork_server=fork)
        try:
            out = tmp_path / f"fork-{fork}"
            launcher.run(str(out), snap, None, 1, run_id=0)
            assert (launcher._fork_server is not None) is fork
        finally:
            launcher.close()
        with open(out / RESULT_FILE) as f:
            result = json.load(f)
        outs[fork] = load_file(str(out / CANDIDATE_FILE)), result
    (cold, cold_result), (warm, warm_result) = outs[False], outs[True]
    assert cold.keys() == warm.keys()
    for key in cold:
        assert (cold[key] == warm[key]).all(), key  # bit for bit
    assert cold_result["epoch_losses"] == warm_result["epoch_losses"]


@pytest.mark.slow
def test_two_forked_gloo_ranks_train(tmp_path):
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path)
    try:
        launcher.run(str(tmp_path / "out"), snap, None, 2, run_id=0)
    finally:
        launcher.close()
    with open(tmp_path / "out" / RESULT_FILE) as f:
        assert json.load(f)["rank_count"] == 2


@pytest.mark.slow
def test_the_process_table_of_a_forked_worker(tmp_path):
    """Parent, session, priority, output, threads: seen from /proc, as another process would."""
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=100_000, worker_nice=5)
    out = tmp_path / "out"
    t, outcome = _run_in_thread(launcher, out, snap)
    try:
        _wait(lambda: launcher.pids(), "no worker started")
        (pid,) = launcher.pids()
        server = launcher._fork_server
        assert server is not None
        # the spawn is answered right after the fork: the child's set-up (setpgid, closing the
        # server's pipes, its log as stdout) may still be under way on a loaded machine
        log = str(out / "worker-0.log")
        _wait(lambda: os.readlink(f"/proc/{pid}/fd/1") == log, "the worker never took its log as stdout")
        state, ppid, pgrp, session = proc_stat(pid)[:4]
        assert int(ppid) == server.pid and int(proc_stat(server.pid)[1]) == os.getpid()
        assert int(pgrp) == pid  # its own group: a cancel kills it
        # ... in this process's session, so in its autogroup: the only place where the worker's
        # SCHED_IDLE yields the CPU to a serving process (worker.lower_priority)
        assert int(session) == os.getsid(0)
        if os.path.exists("/proc/self/autogroup"):
            assert autogroup(pid) == autogroup("self")
        _wait(lambda: _policy(pid) == os.SCHED_IDLE, "the worker never switched to SCHED_IDLE")
        # the server's imports and forks are training's work: as nice as a worker, which is not
        # lowered twice for being forked by it, and SCHED_IDLE as it is
        assert _policy(server.pid) == os.SCHED_IDLE
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, server.pid) == os.getpriority(os.PRIO_PROCESS, pid) == min(19, base + 5)
        assert os.readlink(f"/proc/{pid}/fd/2") == log
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
        # the server forks from its only thread; its protocol pipes are not the worker's
        assert os.listdir(f"/proc/{server.pid}/task") == [str(server.pid)]
        server_fds = {os.readlink(f"/proc/{server.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{server.pid}/fd")}
        worker_fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert not {fd for fd in server_fds & worker_fds if fd.startswith("pipe:")}
        launcher.cancel.set()
        t.join(60)
        assert "cancelled" in str(outcome["error"])
        assert not alive(pid) and not os.path.exists(f"/proc/{pid}")  # killed and reaped
        assert server.alive() and launcher._fork_server is server  # kept for the next run
    finally:
        launcher.cancel.set()
        t.join(60)
        launcher.close()
    assert not os.path.exists(f"/proc/{server.pid}")


@pytest.mark.slow
def test_a_fresh_interpreter_worker_stays_in_the_launchers_session_and_autogroup(tmp_path):
    """``fork_server=False``: the worker leads its own group (what a cancel kills), in this
    process's session, at SCHED_IDLE; the cancel leaves nothing in the process table.
    """
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=100_000, fork_server=False)
    t, outcome = _run_in_thread(launcher, tmp_path / "out", snap)
    try:
        _wait(lambda: launcher.pids(), "no worker started")
        (pid,) = launcher.pids()
        _, ppid, pgrp, session = proc_stat(pid)[:4]
        assert (int(ppid), int(pgrp), int(session)) == (os.getpid(), pid, os.getsid(0))
        if os.path.exists("/proc/self/autogroup"):
            assert autogroup(pid) == autogroup("self")
        _wait(lambda: _policy(pid) == os.SCHED_IDLE, "the worker never switched to SCHED_IDLE")
        launcher.cancel.set()
        t.join(60)
        assert "cancelled" in str(outcome["error"])
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        launcher.cancel.set()
        t.join(60)
        launcher.close()


@pytest.mark.slow
def test_a_killed_fork_server_fails_its_run_and_the_next_run_starts_another(tmp_path):
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=100_000)
    t, outcome = _run_in_thread(launcher, tmp_path / "a", snap)
    try:
        _wait(lambda: launcher.pids(), "no worker started")
        (pid,), server = launcher.pids(), launcher._fork_server
        os.kill(server.pid, signal.SIGKILL)
        t.join(60)
        assert isinstance(outcome.get("error"), TrainingError)
        assert "killed by signal 9" in str(outcome["error"])
        _wait(lambda: not alive(pid), "the worker outlived its fork server")
        launcher._config = lambda: BackgroundTrainingConfig(num_epochs=2, batch_size=24, worker_nice=0)
        launcher.run(str(tmp_path / "b"), snap, None, 1, run_id=1)
        assert launcher._fork_server is not None and launcher._fork_server.pid != server.pid
        assert (tmp_path / "b" / CANDIDATE_FILE).exists()
    finally:
        launcher.cancel.set()
        t.join(60)
        launcher.close()


@pytest.mark.slow
def test_the_server_is_restarted_at_the_workers_priority_when_it_changes(tmp_path):
    """``worker_nice`` and ``worker_sched_idle`` are the server's too: a run after one changed
    gets a new server, at the new priority (seen from /proc); while nothing changed the server
    is kept."""
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=1)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        seen = []
        for run, (nice, idle) in enumerate([(0, True), (0, True), (3, True), (3, False)]):
            launcher._config = functools.partial(BackgroundTrainingConfig, num_epochs=1, batch_size=24,
                                                 worker_nice=nice, worker_sched_idle=idle)
            launcher.run(str(tmp_path / f"run{run}"), snap, None, 1, run_id=run)
            server = launcher._fork_server
            assert server is not None and server.alive()
            seen.append(server.pid)
            assert os.getpriority(os.PRIO_PROCESS, server.pid) == min(19, base + nice)
            assert _policy(server.pid) == (os.SCHED_IDLE if idle else os.SCHED_OTHER)
        assert seen[0] == seen[1] != seen[2] != seen[3]
    finally:
        launcher.close()


def test_a_worker_forked_without_sched_idle_by_an_idle_server_gets_the_normal_policy(tmp_path):
    """The policy a fresh interpreter would have: the server's SCHED_IDLE is not inherited by a
    worker whose arguments do not ask for it."""
    launcher = _launcher(tmp_path, num_epochs=100_000, worker_sched_idle=False)
    server = forkserver.ForkServer(launcher._base_env(), sched_idle=True)
    try:
        _wait(lambda: _policy(server.pid) == os.SCHED_IDLE, "the server never switched to SCHED_IDLE")
        args = launcher.worker_args(str(tmp_path / "out"), _snapshot(tmp_path / "snap.arrow"), None, 0)
        assert "--sched-idle" not in args
        (tmp_path / "out").mkdir()
        worker = server.spawn(args, launcher._env(0, 1, 0), str(tmp_path / "out" / "worker-0.log"))
        _wait(lambda: os.readlink(f"/proc/{worker.pid}/fd/1").endswith("worker-0.log"),
              "the worker never took its log as stdout")
        _wait(lambda: _policy(worker.pid) == os.SCHED_OTHER, "the worker kept the server's SCHED_IDLE")
        assert worker.poll() is None  # still training: the policy seen is the worker's own
        worker.kill_group()
        assert worker.wait(60) == -signal.SIGKILL
    finally:
        server.close()
    assert not os.path.exists(f"/proc/{server.pid}")


_HOLDER = textwrap.dedent("""
    import json, sys, threading, time
    from vortex.config import BackgroundTrainingConfig
    from vortex.training.launcher import WorkerLauncher, worker_env
    cfg = BackgroundTrainingConfig(num_epochs=100_000, batch_size=24, worker_nice=0)
    kw = {"in_features": 8, "hidden": 16, "out_features": 3, "seed": 3}
    launcher = WorkerLauncher(lambda: cfg, "vortex.training.models:mlp", kw, sys.argv[3],
                              threading.Event())
    threading.Thread(target=launcher.run, args=(sys.argv[2], sys.argv[1], None, 1, 0)).start()
    while not launcher.pids():
        time.sleep(0.01)
    print(json.dumps([launcher._fork_server.pid, *launcher.pids()]), flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "os.fork", "libc fork"])
def test_the_fork_server_and_its_workers_end_with_the_launching_process(tmp_path, how):
    """kill -9 of the process that started the server: the server and its worker go.

    Also when that process had forked a child that lives on: after ``os.fork`` the child lets
    go of the server's input pipe (an at-fork hook), so the server sees its end of input; after
    a fork below Python, where no hook runs, the child still holds the pipe and the server
    notices that its parent changed.
    """
    snap = _snapshot(tmp_path / "snap.arrow")
    script = _HOLDER
    if how != "SIGKILL":  # a child forked after the server started inherits the pipe
        fork = "ctypes.CDLL(None).fork()" if how == "libc fork" else "os.fork()"
        script = script.replace("time.sleep(600)", textwrap.dedent(f"""
            import ctypes, os
            if {fork} == 0:
                time.sleep(600)  # (or hangs on a lock no thread of the child will release)
                os._exit(0)
            time.sleep(600)"""))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    holder = subprocess.Popen([sys.executable, "-c", script, snap, str(tmp_path / "out"),
                               str(tmp_path / "models")], stdout=subprocess.PIPE, text=True, env=env)
    pids: list[int] = []
    try:
        pids = json.loads(holder.stdout.readline())
        assert all(alive(p) for p in pids)
        holder.kill()
        holder.wait()
        _wait(lambda: not any(alive(p) for p in pids), f"outlived the launcher: {pids}", 30)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if how != "SIGKILL":
            subprocess.run(["pkill", "-KILL", "-f", str(tmp_path / "out")], check=False)


@pytest.mark.slow
def test_the_service_factory_is_imported_after_the_fork(tmp_path, monkeypatch):
    """An RSI patch may change the model factory's module on disk: the next run builds the new
    one, so the server must not have imported it."""
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "svc_model.py").write_text(textwrap.dedent("""
        import torch
        def build(in_features, out_features):
            return torch.nn.Sequential(torch.nn.Linear(in_features, out_features))
    """))
    monkeypatch.syspath_prepend(str(pkg))
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, "svc_model:build", {"in_features": 8, "out_features": 3})
    try:
        launcher.run(str(tmp_path / "a"), snap, None, 1, run_id=0)
        assert set(load_file(str(tmp_path / "a" / CANDIDATE_FILE))) == {"0.weight", "0.bias"}
        (pkg / "svc_model.py").write_text(textwrap.dedent("""
            import torch
            def build(in_features, out_features):
                return torch.nn.Sequential(torch.nn.Linear(in_features, 4), torch.nn.ReLU(),
                                           torch.nn.Linear(4, out_features))
        """))
        server = launcher._fork_server
        launcher.run(str(tmp_path / "b"), snap, None, 1, run_id=1)
        assert launcher._fork_server is server  # the same server, a fresh import
        assert set(load_file(str(tmp_path / "b" / CANDIDATE_FILE))) == {
            "0.weight", "0.bias", "2.weight", "2.bias"}
    finally:
        launcher.close()


def test_without_a_fork_server_the_workers_start_cold_and_it_is_said_once(tmp_path, monkeypatch, caplog):
    starts = []

    def broken(self, env, **kwargs):
        starts.append(env)
        raise TrainingError("the training fork server exited at start-up (status 1)")

    monkeypatch.setattr(forkserver.ForkServer, "__init__", broken)
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=1)
    with caplog.at_level(logging.WARNING, logger="vortex.training.launcher"):
        for run in range(2):
            launcher.run(str(tmp_path / f"r{run}"), snap, None, 1, run_id=run)
            assert (tmp_path / f"r{run}" / CANDIDATE_FILE).exists()
    assert len(starts) == 1  # not tried again at every run
    assert [r.getMessage() for r in caplog.records] == [
        "training workers start as fresh interpreters from now on: "
        "the training fork server exited at start-up (status 1)"]


def test_a_forked_worker_reports_how_it_ended(tmp_path):
    """Exit status and signal come back as Popen's returncode would say them."""
    launcher = _launcher(tmp_path)
    env = launcher._env(0, 1, 0)
    try:
        server = launcher._fork_server_for(env)
        bad = server.spawn(["--no-such-flag"], env, str(tmp_path / "bad.log"))
        assert bad.wait(60) == 2  # argparse's usage error, as from the command line
        assert "error: the following arguments are required" in (tmp_path / "bad.log").read_text()
        snap = _snapshot(tmp_path / "snap.arrow")
        slow = server.spawn(["--snapshot", snap, "--out", str(tmp_path / "o"), "--factory", FACTORY,
                             "--factory-kwargs", json.dumps(KW), "--epochs", "100000"], env,
                            str(tmp_path / "slow.log"))
        assert isinstance(slow, ForkedWorker) and slow.poll() is None
        slow.kill_group()  # at once: before the worker's setpgid() has made its group
        assert slow.wait(60) == -signal.SIGKILL
        slow.kill_group()  # reaped already: a no-op, never a signal to a reused pid
    finally:
        launcher.close()


@pytest.mark.slow
def test_a_launcher_dropped_without_close_ends_its_server(tmp_path):
    """A coordinator never stopped must not leave a torch-sized process per launcher behind."""
    import gc

    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=1)
    launcher.run(str(tmp_path / "out"), snap, None, 1, run_id=0)
    pid = launcher._fork_server.pid
    assert alive(pid)
    del launcher
    gc.collect()
    _wait(lambda: not alive(pid), "the server outlived its launcher", 30)


@pytest.mark.slow
def test_an_idle_fork_server_stops_and_the_next_run_starts_another(tmp_path):
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=1, fork_server_idle_secs=0.5)
    try:
        launcher.run(str(tmp_path / "a"), snap, None, 1, run_id=0)
        first = launcher._fork_server.pid
        _wait(lambda: not alive(first), "an idle fork server kept running", 30)
        assert launcher._fork_server is None
        launcher.run(str(tmp_path / "b"), snap, None, 1, run_id=1)
        assert launcher._fork_server is not None and launcher._fork_server.pid != first
    finally:
        launcher.close()


def test_the_idle_timer_spares_a_server_that_a_newer_run_used(tmp_path):
    launcher = _launcher(tmp_path)
    server = launcher._fork_server_for(launcher._env(0, 1, 0))
    try:
        launcher._last_run = 2
        launcher._close_if_idle(1)  # the timer of run 1; run 2 came since
        assert launcher._fork_server is server and server.alive()
        launcher._runs = 1
        launcher._close_if_idle(2)  # a run is under way
        assert launcher._fork_server is server and server.alive()
        launcher._runs = 0
        launcher._close_if_idle(2)
        assert launcher._fork_server is None and not server.alive()
    finally:
        launcher._runs = 0
        launcher.close()


@pytest.mark.slow
def test_back_to_back_runs_keep_one_idle_timer(tmp_path):
    """A busy trainer runs every second: each run's idle timer replaces the last one, so the
    process does not collect a sleeping thread per run for ``fork_server_idle_secs``."""
    snap = _snapshot(tmp_path / "snap.arrow")
    launcher = _launcher(tmp_path, num_epochs=1)
    def timers() -> int:
        return sum(isinstance(t, threading.Timer) for t in threading.enumerate())

    timers_before = timers()
    try:
        for run in range(5):
            launcher.run(str(tmp_path / f"r{run}"), snap, None, 1, run_id=run)
        _wait(lambda: timers() <= timers_before + 1, "cancelled idle timers kept their threads", 10)
    finally:
        launcher.close()


def test_closing_a_server_still_importing_kills_it_rather_than_waiting_for_its_imports(tmp_path):
    """A coordinator stopped right after its first run began must not wait seconds for torch's import."""
    launcher = _launcher(tmp_path)
    server = launcher._fork_server_for(launcher._env(0, 1, 0))
    assert server._ready is None  # Popen just returned: still importing
    launcher.close()
    assert server._proc.returncode == -signal.SIGKILL and not os.path.exists(f"/proc/{server.pid}")


def _server_with_a_fake_torch(tmp_path, torch_init: str):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(torch_init + "\n")
    env = _launcher(tmp_path)._base_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "fake"), env["PYTHONPATH"]])
    return forkserver.ForkServer(env), env


def test_a_server_whose_imports_fail_is_reported_at_spawn_and_gone(tmp_path):
    server, env = _server_with_a_fake_torch(tmp_path, "raise ImportError('no torch here')")
    with pytest.raises(TrainingError, match=r"exited at start-up \(status 1\)"):
        server.spawn(["--help"], env, str(tmp_path / "w.log"))
    _wait(lambda: not alive(server.pid), "the failed server kept running")


def test_a_server_still_importing_is_kept_when_a_spawn_gives_up_waiting(tmp_path):
    """On a loaded machine a SCHED_IDLE server imports slowly: a spawn that stops waiting
    leaves it to finish (a new one would start over); closing it kills it at once."""
    server, env = _server_with_a_fake_torch(tmp_path, "import time; time.sleep(60)")
    try:
        assert server.wait_ready(0.5) is False
        with pytest.raises(TrainingError, match="still importing after 0.5 s"):
            server.spawn(["--help"], env, str(tmp_path / "w.log"), timeout=0.5)
        assert server.alive()
    finally:
        server.close()
    assert server._proc.returncode == -signal.SIGKILL and not alive(server.pid)


def test_a_run_waits_for_a_server_still_importing_until_its_deadline_and_keeps_it(tmp_path):
    launcher = _launcher(tmp_path, run_timeout_secs=1.0)
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import time; time.sleep(60)\n")
    launcher._base_env = lambda: {**worker_env(1), "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "fake"), worker_env(1)["PYTHONPATH"]])}
    launcher._env = lambda *a: launcher._base_env()  # the same PYTHONPATH: the same server
    try:
        server = launcher._fork_server_for(launcher._env())
        with pytest.raises(TimeoutError, match="the training fork server was still importing"):
            launcher.run(str(tmp_path / "out"), _snapshot(tmp_path / "snap.arrow"), None, 1, run_id=0)
        assert launcher._fork_server is server and server.alive()
        assert launcher._fork_unavailable is None  # slow is not broken: the next run uses it
    finally:
        launcher.close()
    assert not alive(server.pid)
