"""Training runs over several machines: ``torchrun`` nodes that meet through shared storage.

With ``BackgroundTrainingConfig.distributed.run_url`` set, a coordinator's run goes:

1. the run's snapshot, written whole to ``<run_url>/run-<id>/snapshot.arrow``;
2. ``launch.json`` there, written whole: the worker arguments
   (:meth:`~vortex.training.launcher.WorkerLauncher.worker_args`, the same for every rank),
   the rendezvous (id, endpoint, ``nnodes``, ``nproc_per_node``, join timeout), the run
   timeout and when it was written;
3. this machine's node, started and supervised like the local workers (a process group of its
   own, killed on cancellation or ``run_timeout_secs``), hosting the rendezvous;
4. once it succeeded, rank 0's ``result.json`` and candidate (whichever machine rank 0 ran on)
   fetched into the local run directory, which the coordinator concludes as a local run's.

Whatever the outcome, the run's files are then deleted, ``launch.json`` first: no agent joins a
run that is over. On every other machine, ``vortex training join`` (:func:`join`) polls
``run_url`` for a ``launch.json`` it has not run, younger than its join timeout, and starts its
node with the same arguments, in a working directory of its own (where its log stays).

A node is ``python -P -m vortex.training.multinode <torchrun arguments>``: torchrun's own entry
point, after arming the parent-death signal, so a node dies with the process that started it
(coordinator or join agent, even SIGKILLed), and its ranks with it (theirs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._fsspec import filesystem, put_whole
from .._io import atomic_write_bytes
from ..errors import TrainingError
from .launcher import WorkerLauncher, _ended, _tail, worker_env
from .worker import CANDIDATE_FILE, RESULT_FILE

__all__ = ["LAUNCH_FILE", "NODE_LOG", "SNAPSHOT_FILE", "join", "node_command", "run_node", "run_on_nodes"]

log = logging.getLogger(__name__)

LAUNCH_FILE = "launch.json"
SNAPSHOT_FILE = "snapshot.arrow"
#: A node's log (torchrun's and its ranks' output), in the node's working directory.
NODE_LOG = "node.log"

_POLL_SECS = 0.05  # how often a node's supervisor checks it, the cancel flag and the timeout


def node_command(launch: dict[str, Any], *, is_host: bool) -> list[str]:
    """The command line of one node of ``launch`` (the contents of a ``launch.json``);
    ``is_host``: this node hosts the rendezvous (the coordinator's machine).
    """
    conf = f"join_timeout={math.ceil(launch['join_timeout_secs'])},is_host={str(is_host).lower()}"
    return [sys.executable, "-P", "-m", __name__, "--nnodes", str(launch["nnodes"]),
            "--nproc-per-node", str(launch["nproc_per_node"]), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", launch["rdzv_endpoint"], "--rdzv-id", launch["rdzv_id"],
            "--rdzv-conf", conf, "--max-restarts", "0",
            "-m", "vortex.training.worker", *launch["worker_args"]]


def run_node(launch: dict[str, Any], *, is_host: bool, cwd: str, env: dict[str, str],
             cancel: threading.Event, started: Callable[[subprocess.Popen], None] | None = None) -> None:
    """Run one node of ``launch`` in ``cwd`` (its log: :data:`NODE_LOG` there) until it ends.

    Raises :class:`TrainingError` when it fails or ``cancel`` is set, :class:`TimeoutError`
    after the launch's ``run_timeout_secs``; the node is killed then. ``started`` receives the
    node's process (for its pid).
    """
    log_path = os.path.join(cwd, NODE_LOG)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(node_command(launch, is_host=is_host), cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                process_group=0)  # not a session: see worker.lower_priority
    deadline = time.monotonic() + launch["run_timeout_secs"]
    try:
        if started is not None:
            started(proc)
        while proc.poll() is None:
            if cancel.wait(_POLL_SECS):
                raise TrainingError(f"node of {launch['rdzv_id']} cancelled")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node of {launch['rdzv_id']} exceeded run_timeout_secs="
                                   f"{launch['run_timeout_secs']}")
        if proc.returncode != 0:
            raise TrainingError(f"torchrun node of {launch['rdzv_id']} failed ({_ended(proc.returncode)}): "
                                f"{_tail(log_path)}")
    finally:
        if proc.poll() is None:
            try:  # the agent's group; its ranks (sessions of their own) die with it, by their parent-death signal
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


def run_on_nodes(launcher: WorkerLauncher, config: Any, run_dir: str, snap_path: str,
                 init_version: int | None, run_id: int) -> None:
    """Run ``run_id`` on ``config.distributed.nnodes`` machines (see the module docstring);
    on success ``run_dir`` holds its ``result.json`` and candidate, as after a local run.

    ``config`` is the :class:`~vortex.config.BackgroundTrainingConfig`; the run URL is reached
    with the launcher's (the registry's) storage options.
    """
    dist = config.distributed
    options = launcher.storage_options
    url = f"{dist.run_url.rstrip('/')}/run-{run_id}"
    fs, root = filesystem(url, options)
    launch = {"rdzv_id": f"run-{run_id}-{uuid.uuid4().hex[:8]}", "rdzv_endpoint": dist.rdzv_endpoint,
              "nnodes": dist.nnodes, "nproc_per_node": dist.nproc_per_node,
              "join_timeout_secs": dist.join_timeout_secs, "run_timeout_secs": config.run_timeout_secs,
              "worker_threads": config.worker_threads, "created_at": time.time(),
              "worker_args": launcher.worker_args(url, f"{url}/{SNAPSHOT_FILE}", init_version, run_id)}
    try:
        with open(snap_path, "rb") as f:
            put_whole(fs, f"{root}/{SNAPSHOT_FILE}", f.read())
        put_whole(fs, f"{root}/{LAUNCH_FILE}", json.dumps(launch).encode())

        def started(proc: subprocess.Popen) -> None:
            launcher.procs = [proc]

        try:
            run_node(launch, is_host=True, cwd=run_dir, env=worker_env(config.worker_threads, options),
                     cancel=launcher.cancel, started=started)
        finally:
            launcher.procs = []
        # the candidate, then the commit marker, as the worker writes them
        for name in (CANDIDATE_FILE, RESULT_FILE):
            atomic_write_bytes(os.path.join(run_dir, name), fs.cat_file(f"{root}/{name}"))
    finally:
        _remove_run(fs, root)


def _remove_run(fs: Any, root: str) -> None:
    """Delete a run's files on the run URL, ``launch.json`` first (no agent may join it now)."""
    try:
        for path in (f"{root}/{LAUNCH_FILE}", root):
            if fs.exists(path):
                fs.rm(path, recursive=True)
    except Exception as exc:  # leftovers cost storage, not correctness: the run's outcome stands
        log.warning("could not delete the run files at %s: %s: %s", root, type(exc).__name__, exc)


def _next_launch(fs: Any, root: str, seen: set[str], bad: set[str]) -> dict[str, Any] | None:
    """The first launch (by path) under ``root`` whose rendezvous id is not in ``seen`` and younger than
    its join timeout; adds the id of every launch it returns or skips to ``seen``, and the path
    of every unreadable one to ``bad`` (logged once).
    """
    fs.invalidate_cache()  # listings are cached by fsspec: a new launch must show up
    for path in sorted(fs.glob(f"{root}/run-*/{LAUNCH_FILE}")):
        if path in bad:
            continue
        try:
            launch = json.loads(fs.cat_file(path))
            rdzv_id, created, wait = launch["rdzv_id"], launch["created_at"], launch["join_timeout_secs"]
        except FileNotFoundError:  # the run ended between the listing and the read
            continue
        except (ValueError, KeyError, TypeError) as exc:
            bad.add(path)
            log.error("skipping %s: not a launch file (%s: %s)", path, type(exc).__name__, exc)
            continue
        if rdzv_id in seen:
            continue
        seen.add(rdzv_id)
        age = time.time() - created
        if age > wait:
            log.info("skipping %s: written %.0f s ago, longer than its join timeout (%s s)", path, age, wait)
            continue
        return launch
    return None


def join(run_url: str, storage_options: dict[str, Any] | None, work_dir: str, *, once: bool = False,
         poll_secs: float = 1.0, stop: threading.Event | None = None,
         report: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Join the runs of ``run_url``: start a node for each new ``launch.json`` (one at a time)
    until ``stop`` is set; with ``once``, after the first. Returns 0 if the last node
    succeeded, else 1.

    A node runs in ``<work_dir>/<rendezvous id>`` (its log, :data:`NODE_LOG`, stays there),
    with this process's ``sys.path`` and ``storage_options`` (the run URL's and the
    registry's), and is killed when ``stop`` is set. ``report`` receives each node's outcome:
    ``{"rdzv_id", "ok", "error", "log"}``.
    """
    fs, root = filesystem(run_url, storage_options)
    stop = stop if stop is not None else threading.Event()
    seen: set[str] = set()
    bad: set[str] = set()
    status = 0
    log.info("joining the training runs of %s", run_url)
    while not stop.is_set():
        try:
            launch = _next_launch(fs, root, seen, bad)
        except OSError as exc:  # the storage did not answer this time: an agent outlives a blip
            log.warning("could not list %s: %s: %s", run_url, type(exc).__name__, exc)
            launch = None
        if launch is None:
            stop.wait(poll_secs)
            continue
        node_dir = os.path.join(work_dir, launch["rdzv_id"])
        os.makedirs(node_dir, exist_ok=True)
        outcome: dict[str, Any] = {"rdzv_id": launch["rdzv_id"], "ok": True, "error": None,
                                   "log": os.path.join(node_dir, NODE_LOG)}
        log.info("starting a node of %s (log: %s)", launch["rdzv_id"], outcome["log"])
        try:
            run_node(launch, is_host=False, cwd=node_dir,
                     env=worker_env(launch["worker_threads"], storage_options), cancel=stop)
        except (TrainingError, TimeoutError) as exc:
            outcome.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        status = 0 if outcome["ok"] else 1
        if report is not None:
            report(outcome)
        if once:
            break
    return status


def _node_main(argv: list[str]) -> None:
    """A node: torchrun's entry point, dying with the process that started it."""
    from .worker import die_with_parent

    die_with_parent()  # $VORTEX_PARENT_PID: the coordinator or the join agent
    os.environ.pop("VORTEX_PARENT_PID")  # the ranks' parent is this agent, not that process
    from torch.distributed.run import main

    main(argv)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    _node_main(sys.argv[1:])
