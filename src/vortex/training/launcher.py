"""Training worker processes: start them, supervise them, say why they failed.

A run's ``world_size`` workers (:mod:`vortex.training.worker`, torch DDP) are subprocesses,
forked by a :class:`~vortex.training.forkserver.ForkServer` that imported torch once (or, with
``fork_server=False``, fresh interpreters), each the leader of a process group (in the
launcher's session: see :func:`~vortex.training.worker.lower_priority`) that is killed when
the run ends early (cancellation, timeout, a failed peer). The server stops with the launcher,
or after ``fork_server_idle_secs`` without a run. Their logs stay in the run
directory; everything else a run leaves is deleted (:func:`drop_bulky`), and so are the leftovers of a process that
died mid-run (:meth:`WorkerLauncher.drop_leftovers`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

from .._io import pid_alive
from ..config import as_dict
from ..errors import TrainingError
from ..home import HomeLayout
from .forkserver import ForkedWorker, ForkServer
from .worker import STORAGE_OPTIONS_ENV

__all__ = ["WorkerLauncher", "drop_bulky", "worker_env"]

log = logging.getLogger(__name__)

#: A running worker: a fresh interpreter, or forked by the fork server.
Worker = subprocess.Popen | ForkedWorker

_POLL_SECS = 0.05  # how often a run checks its workers, the cancel flag and the timeout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failure(procs: list[Worker], logs: list[str], settle_secs: float = 1.0) -> str:
    """Why a run's workers failed, naming the rank that caused it first.

    When one rank dies, its peers fail in turn (gloo: "connection reset by peer"), and whichever
    the poll sees first is luck. So the others get ``settle_secs`` to exit, then a rank killed by
    a signal is blamed before ranks that exited with an error, lowest rank first.
    """
    deadline = time.monotonic() + settle_secs
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    failed = [(rank, p.returncode) for rank, p in enumerate(procs) if p.returncode not in (None, 0)]
    rank, code = min(failed, key=lambda rc: (rc[1] > 0, rc[0]))
    then = "".join(f"; then rank {r} ({_ended(c)})" for r, c in failed if r != rank)
    return f"worker rank {rank} failed ({_ended(code)}){then}: {_tail(logs[rank])}"


def _kill_group(p: Worker) -> None:
    """SIGKILL a worker's process group (it leads it: the worker and its children)."""
    if isinstance(p, ForkedWorker):
        p.kill_group()  # by the fork server, which reaps it: the pid cannot have been reused
        return
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _close_if_idle(launcher: weakref.ref[WorkerLauncher], last_run: int) -> None:
    alive = launcher()
    if alive is not None:
        alive._close_if_idle(last_run)


def _ended(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def worker_env(threads: int, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment of a process started to run training workers: this process's, with
    its ``sys.path`` (the worker must import the same vortex and model factory), ``threads``
    torch threads, this process as the parent to die with (see ``worker.die_with_parent``) and
    the storage options of the URLs the worker reaches.
    """
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(OMP_NUM_THREADS=str(threads), VORTEX_PARENT_PID=str(os.getpid()))
    if storage_options:
        env[STORAGE_OPTIONS_ENV] = json.dumps(storage_options)
    return env


def drop_bulky(run_dir: str) -> None:
    """Delete every file of a run directory but the worker logs (kept to inspect a failure)."""
    for parent, _, names in os.walk(run_dir):
        for name in names:
            if not name.endswith(".log"):
                os.unlink(os.path.join(parent, name))


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


class WorkerLauncher:
    """Runs the worker processes of training runs.

    Parameters
    ----------
    config
        Returns the current :class:`~vortex.config.BackgroundTrainingConfig`.
    model_factory, factory_kwargs
        What the workers build the model with.
    registry_root, storage_options
        The registry the workers read the initial (or compared) version from (a directory or
        a URL), and the fsspec options of a URL.
    cancel
        Set to end the running workers early ("run cancelled").
    """

    def __init__(self, config: Any, model_factory: str, factory_kwargs: dict[str, Any],
                 registry_root: str, cancel: threading.Event,
                 storage_options: dict[str, Any] | None = None) -> None:
        self._config = config
        self.model_factory = model_factory
        self.factory_kwargs = factory_kwargs
        self.registry_root = registry_root
        self.storage_options = dict(storage_options or {})
        self.cancel = cancel
        self.procs: list[Worker] = []
        self._fork_server: ForkServer | None = None
        self._fork_lock = threading.Lock()
        self._runs = 0  # runs under way (close() waits for them)
        self._last_run = 0  # numbers the runs: an idle timer closes the server only if no run came
        self._fork_unavailable: str | None = None  # why the fork server could not start
        self._close_after_runs = False
        self._idle_timer: threading.Timer | None = None

    def pids(self) -> list[int]:
        """Process ids of the running workers (empty when none runs)."""
        return [p.pid for p in self.procs]

    def _base_env(self) -> dict[str, str]:
        return worker_env(self._config().worker_threads)

    def _env(self, rank: int, world: int, port: int) -> dict[str, str]:
        env = worker_env(self._config().worker_threads, self.storage_options)
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        return env

    def _start(self, args: list[str], env: dict[str, str], log_path: str, deadline: float) -> Worker:
        """One worker: forked by the fork server (``fork_server``), else a fresh interpreter.

        A fork server still importing is waited for until the run's ``deadline`` (or a
        cancel), and kept when that comes first: under SCHED_IDLE on a loaded machine its
        imports only progress on idle CPU, and a new one would start them over. One that
        exited at start-up (say, an import started a thread) is not tried again by this
        launcher, which says so in the log once. One that fails to fork a worker fails the
        run (:class:`TrainingError`) and is replaced at the next run.
        """
        server = self._usable_fork_server(env)
        if server is not None and self._wait_for_imports(server, deadline):
            return server.spawn(args, env, log_path)
        with open(log_path, "wb") as out:
            # -P: the worker must import the vortex this process runs, never a source
            # checkout that happens to be the current directory.
            return subprocess.Popen([sys.executable, "-P", "-m", "vortex.training.worker", *args],
                                    env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    process_group=0)  # not a session: see worker.lower_priority

    def _usable_fork_server(self, env: dict[str, str]) -> ForkServer | None:
        """The fork server for workers with ``env`` (maybe still importing), or None when
        ``fork_server`` is off or no server can start.
        """
        if not self._config().fork_server or self._fork_unavailable is not None:
            return None
        try:
            return self._fork_server_for(env)
        except TrainingError as exc:
            self._give_up_fork_server(exc)
            return None

    def _wait_for_imports(self, server: ForkServer, deadline: float) -> bool:
        """True once ``server`` is ready; False if it exited at start-up (given up)."""
        while True:
            try:
                if server.wait_ready(_POLL_SECS):
                    return True
            except TrainingError as exc:
                self._give_up_fork_server(exc)
                return False
            self._check_cancel_and_deadline(deadline, "the training fork server was still importing")

    def _give_up_fork_server(self, exc: TrainingError) -> None:
        self._fork_unavailable = str(exc)
        log.warning("training workers start as fresh interpreters from now on: %s", exc)

    def _fork_server_for(self, env: dict[str, str]) -> ForkServer:
        """The fork server (maybe still importing), (re)started when it is gone or was started
        with another ``PYTHONPATH`` (it decides which modules the server imported),
        ``worker_nice`` or ``worker_sched_idle``.
        """
        cfg = self._config()
        nice, idle = cfg.worker_nice, cfg.worker_sched_idle
        with self._fork_lock:
            server = self._fork_server
            if server is not None and (not server.alive() or (server.nice, server.sched_idle) != (nice, idle)
                                       or server.env.get("PYTHONPATH") != env.get("PYTHONPATH")):
                server.close()
                server = self._fork_server = None
            if server is None:
                server = self._fork_server = ForkServer(self._base_env(), nice=nice, sched_idle=idle)
                # a launcher dropped without close() (a coordinator never stopped) and the
                # interpreter's exit end its server too, not only the server's end of input
                weakref.finalize(self, server.close)
            return server

    def close(self) -> None:
        """Stop the fork server, if one runs (the next run starts another); while a run
        is under way, when it ends (closing the server kills its workers).
        """
        with self._fork_lock:
            if self._runs:
                self._close_after_runs = True
                return
            server, self._fork_server = self._fork_server, None
            self._close_after_runs = False
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        if server is not None:
            server.close()

    def worker_args(self, out_dir: str, snap_path: str, init_version: int | None, run_id: int,
                    candidate: str | None = None) -> list[str]:
        """The worker's command-line arguments for run ``run_id`` under the current config: the
        same for every rank, on this machine or under ``torchrun`` on several.

        ``out_dir``, ``snap_path`` and ``candidate`` may be fsspec URLs; their storage options
        reach the worker through its environment (``STORAGE_OPTIONS_ENV``), never these arguments.
        """
        cfg = self._config()
        args = ["--snapshot", snap_path, "--out", out_dir, "--factory", self.model_factory,
                "--factory-kwargs", json.dumps(self.factory_kwargs), "--task", cfg.task,
                "--epochs", str(cfg.num_epochs), "--lr", repr(cfg.learning_rate),
                "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed + run_id),
                "--threads", str(cfg.worker_threads), "--nice", str(cfg.worker_nice),
                "--flux", json.dumps(as_dict(cfg.flux)), "--confidence-level", repr(cfg.confidence_level)]
        if cfg.worker_sched_idle:
            args.append("--sched-idle")
        if init_version is not None:
            args += ["--registry", self.registry_root, "--init-version", str(init_version)]
        if candidate is not None:
            args += ["--candidate", candidate]
        return args

    def run(self, out_dir: str, snap_path: str, init_version: int | None, world_size: int,
            run_id: int, candidate: str | None = None) -> None:
        """Run ``world_size`` worker processes writing into ``out_dir``; raise on any failure.

        With ``candidate`` (a safetensors file), the one worker only validates it against
        ``init_version`` on the snapshot's held-out rows instead of training.
        """
        cfg = self._config()
        args = self.worker_args(out_dir, snap_path, init_version, run_id, candidate)
        port = _free_port() if world_size > 1 else 0
        deadline = time.monotonic() + cfg.run_timeout_secs
        procs: list[Worker] = []
        os.makedirs(out_dir, exist_ok=True)
        logs = [os.path.join(out_dir, f"worker-{r}.log") for r in range(world_size)]
        with self._fork_lock:
            self._runs += 1
            self._last_run += 1
        try:
            for rank in range(world_size):
                procs.append(self._start(args, self._env(rank, world_size, port), logs[rank], deadline))
            self.procs = procs
            while True:
                codes = [p.poll() for p in procs]
                if any(c not in (None, 0) for c in codes):
                    raise TrainingError(_failure(procs, logs))
                if all(c == 0 for c in codes):
                    return
                self.cancel.wait(_POLL_SECS)
                self._check_cancel_and_deadline(deadline)
        finally:
            try:
                self.procs = []
                for p in procs:
                    if p.poll() is None:
                        _kill_group(p)
                    p.wait()
            finally:
                with self._fork_lock:
                    self._runs -= 1
                    close = self._close_after_runs and not self._runs
                    if not self._runs:
                        self._arm_idle_timer()
                if close:
                    self.close()

    def _arm_idle_timer(self) -> None:
        """(With ``_fork_lock`` held.) Close the fork server after ``fork_server_idle_secs``
        unless a run starts meanwhile. One timer at a time (the previous one's thread ends at
        cancel()); it holds the launcher weakly: a pending timer must not keep a dropped one.
        """
        if self._fork_server is None:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = threading.Timer(self._config().fork_server_idle_secs, _close_if_idle,
                                           args=(weakref.ref(self), self._last_run))
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _check_cancel_and_deadline(self, deadline: float, doing: str = "") -> None:
        """Raise if the run was cancelled or is past its ``deadline`` (saying what it was ``doing``)."""
        if self.cancel.is_set():
            raise TrainingError("run cancelled (cancel_run() or stop(cancel=True))")
        if time.monotonic() > deadline:
            raise TimeoutError(f"run exceeded run_timeout_secs={self._config().run_timeout_secs}"
                               + (f": {doing}" if doing else ""))

    def _close_if_idle(self, last_run: int) -> None:
        """Close the fork server if no run started since run number ``last_run`` ended: an
        idle server holds a torch-sized process's memory for nothing.
        """
        with self._fork_lock:
            if self._runs or self._last_run != last_run:
                return
            server, self._fork_server = self._fork_server, None
        if server is not None:
            log.info("training fork server idle for %s s: stopped (the next run starts another)",
                     self._config().fork_server_idle_secs)
            server.close()

    @staticmethod
    def drop_leftovers(layout: HomeLayout) -> None:
        """Delete snapshots and candidates left by a process that died mid-run (keep its logs).

        A run directory is named after the process running it; one whose process is alive
        (this one included) is left alone.
        """
        runs = layout.runs
        if not os.path.isdir(runs):
            return
        for d in os.listdir(runs):
            owner = HomeLayout.run_owner(d)
            if owner is None or not pid_alive(owner):
                drop_bulky(os.path.join(runs, d))
