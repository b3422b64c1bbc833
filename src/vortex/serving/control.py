"""The control plane: one per home, elected by a lock; everything slow runs here.

:class:`ControlPlane` is a :class:`vortex.Orchestrator` that serves no request itself: the
spec's ``configure`` attaches its detector, background trainer and RSI engine, and a pump
thread feeds them what every serving worker recorded in shared memory
(:class:`vortex.shm.FleetReader`): requests into the detector, the tracker and the change
board; labelled samples into the training buffer, the board (tagged with the model version
that answered: the post-swap watch rolls a bad swap back here) and the detector, on the
record of exactly their request. Registry writes (training swaps, cleanup)
and RSI applies happen only here, to the spec's registry (the home's, or the fleet's shared
one: ``ServiceSpec.registry_url``). Its status is published to ``HomeLayout.control_status``
for the workers' ``/vortex/status`` and ``/vortex/events`` while someone reads it
(:func:`want_status`), else only now and then: assembling it is the plane's largest hold of
the GIL, which it shares with the serving event loop of the worker that holds the role.

Exactly one process holds the role (:class:`ControlLock`, a ``flock`` on
``HomeLayout.control_lock``: the kernel releases it when the holder dies, however it dies).
:class:`ControlStandby` waits for the lock in any process (a serving worker, or the
``vortex control`` sidecar, :func:`run_control`) and starts a control plane when it gets it.

No acknowledged feedback is lost: a worker acknowledges a feedback once it is in its segment;
the pump commits the fleet's cursors only after the samples read are saved in the buffer
file, so a successor re-reads whatever its predecessor had not saved (delivery at least once).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

from .._autogroup import lower_session_group
from .._io import atomic_write_text
from ..home import HomeLayout
from .links import RequestLinks
from .pending import remove_dead_rings
from .spec import ServiceSpec

__all__ = ["ControlLock", "ControlPlane", "ControlStandby", "run_control", "want_status"]

log = logging.getLogger(__name__)

_CLEANUP_SECS = 10.0
# pumps an error waits for its request's record: 2 s at the default 0.2 s interval (more while
# the pump idles, whose waits grow to idle_poll_interval)
_LINK_PATIENCE = 10
_MAX_OVERTAKEN = 1 << 16


def _versions(column: np.ndarray) -> list[int | None]:
    """A version column as the change board takes it (-1, no version, as None)."""
    values = column.tolist()
    if len(values) and column.min() < 0:
        return [None if v < 0 else v for v in values]
    return values


STATUS_WANTED_SECS = 10.0
"""A status read (:func:`want_status`) keeps the control plane publishing every
``publish_interval`` for this many seconds; then every ``idle_publish_interval``."""
_WANT_EVERY_SECS = 1.0  # a reader marks its interest at most once a second


def _wanted_path(layout: HomeLayout) -> str:
    return layout.control_status + ".wanted"


_wanted_marked: dict[str, float] = {}


def want_status(home: str | os.PathLike[str]) -> None:
    """Tell the home's control plane that its status is being read (every reader of
    ``HomeLayout.control_status`` calls this): it then publishes every ``publish_interval``
    for :data:`STATUS_WANTED_SECS`. Costs a dictionary lookup (~0.3 µs), and a ``utime`` once a
    second.
    """
    key = os.fspath(home)
    now = time.monotonic()
    if now - _wanted_marked.get(key, -math.inf) < _WANT_EVERY_SECS:
        return
    _wanted_marked[key] = now
    path = _wanted_path(HomeLayout(home))
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            with open(path, "ab"):  # created once; its modification time is the signal
                pass
    except OSError as exc:  # a reader without write access (a read-only dashboard) still reads
        log.debug("cannot mark the status of %s as read: %s", home, exc)


class ControlLock:
    """The home's control-plane lock (non-blocking; held until :meth:`release` or death)."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.path = HomeLayout(home).control_lock
        self._fd = -1

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd >= 0

    def try_acquire(self) -> bool:
        """Take the lock if no process holds it; True if this object holds it now."""
        if self._fd >= 0:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for people reading the home
        self._fd = fd
        return True

    def release(self) -> None:
        """Give the role up (closing the descriptor releases the flock)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _json_default(value: Any) -> Any:
    for method in ("to_dict", "tolist"):
        if hasattr(value, method):
            return getattr(value, method)()
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class ControlPlane:
    """The slow half of a served model (construct it only while holding the :class:`ControlLock`).

    Parameters
    ----------
    spec
        The service; its ``configure`` attaches the detector, trainer and RSI engine.
    poll_interval
        Seconds between two reads of the workers' segments while they bring news.
    idle_poll_interval
        The longest wait between two reads while they bring none (the wait doubles from
        ``poll_interval`` after each empty read).
    commit_interval
        Seconds between two saves of the buffer and commits of the fleet's cursors.
    publish_interval
        Seconds between two writes of the published status while it is read
        (:func:`want_status` within :data:`STATUS_WANTED_SECS`).
    idle_publish_interval
        Seconds between two writes of the published status while nobody reads it.
    """

    def __init__(self, spec: ServiceSpec, *, poll_interval: float = 0.2, idle_poll_interval: float = 1.0,
                 commit_interval: float = 1.0, publish_interval: float = 0.5,
                 idle_publish_interval: float = 5.0) -> None:
        from ..orchestrator import Orchestrator
        from ..shm import FleetReader

        self.spec = spec
        self.layout = HomeLayout(os.path.abspath(spec.home))
        # the shared registry (replicas on several machines) when the spec names one; else
        # training opens the home's own
        registry = spec.open_registry() if spec.shared_registry is not None else None
        self.orchestrator = Orchestrator(spec.build_initial_model(), spec.model_factory, self.layout.root,
                                         feature_dim=spec.feature_dim, modes=spec.modes, task=spec.task,
                                         factory_kwargs=spec.factory_kwargs, pending_capacity=64,
                                         registry=registry)
        if spec.configure is not None:
            spec.configure(self.orchestrator)
        self.fleet = FleetReader(self.layout.root)
        self.poll_interval = poll_interval
        self.idle_poll_interval = max(idle_poll_interval, poll_interval)
        self.commit_interval = commit_interval
        self.publish_interval = publish_interval
        self.idle_publish_interval = idle_publish_interval
        self._wanted = _wanted_path(self.layout)
        self.started_at = time.time()
        self.counts = {"records": 0, "samples": 0, "lost_records": 0, "lost_samples": 0, "commits": 0,
                       "linked_errors": 0, "unlinked_errors": 0, "dropped_errors": 0, "remote_records": 0}
        # the pump and the spool merger (another thread) feed the same components
        self._feeding = threading.Lock()
        self._links = RequestLinks()
        # (worker, request, error, pump) of errors read before their request's record
        self._overtaken: list[tuple[int, int, float, int]] = []
        self._pumps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the attached components and the pump."""
        orch = self.orchestrator
        if orch.detector is not None:
            orch.start_runtime_monitoring()
        if orch.trainer is not None:
            orch.start_background_training()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vortex-control", daemon=True)
        self._thread.start()
        log.info("control plane of %s started in process %d", self.layout.root, os.getpid())

    def stop(self) -> None:
        """Stop the pump (after a last read, save and commit) and the components."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.orchestrator.close()
        self.fleet.close()

    # ------------------------------------------------------------------ the pump
    def _loop(self) -> None:
        next_commit = next_cleanup = 0.0
        published = -math.inf
        backoff = self.poll_interval
        while True:
            stopping = self._stop.is_set()
            wait = self.poll_interval
            try:
                read = self.pump()
                backoff = self.poll_interval if read else min(2 * backoff, self.idle_poll_interval)
                now = time.monotonic()
                if stopping or now >= next_commit:
                    self.commit()
                    next_commit = now + self.commit_interval
                publish_interval = self._publish_interval()
                if stopping or now >= published + publish_interval:
                    self.publish()
                    published = now
                if now >= next_cleanup:
                    remove_dead_rings(self.layout.root, self.spec.feedback_ttl_secs)
                    next_cleanup = now + _CLEANUP_SECS
                # an idle pump's longer waits do not delay a commit or a publication due
                wait = min(backoff, next_commit - now, published + publish_interval - now)
            except Exception:  # the pump must outlive any one failure; the next pass retries
                log.exception("control plane pass failed")
            if stopping:
                return
            self._stop.wait(max(wait, 0.0))

    def pump(self) -> int:
        """Feed what the workers recorded since the last pump to the components; returns the
        number of records and samples read.

        Each record goes to the tracker, the detector and the change board
        (``changes.answered(version, latency_ms, confidence)``, the version that answered it);
        each labelled sample to the training buffer, to the board (``changes.labelled``, as
        :meth:`vortex.Orchestrator.feedback` does: the post-swap and post-apply watches) and
        its error to the detector record of exactly its request (:class:`RequestLinks`).
        """
        orch = self.orchestrator
        batch = self.fleet.read_new()
        detector, trainer, changes = orch.detector, orch.trainer, orch.changes
        self._pumps += 1
        n = 0
        with self._feeding:
            for name, records in batch.metrics.items():
                self.counts["lost_records"] += records.lost
                if not len(records):
                    continue
                first = self._answered(records.latency_ms, records.confidence, records.version)
                if first is not None:
                    self._links.add(batch.segment_ids[name], records.request,
                                    np.arange(first, first + len(records), dtype=np.int64))
                n += len(records)
                self.counts["records"] += len(records)
            n += self._pump_samples(batch, detector, trainer, changes)
        return n

    def _answered(self, latency_ms: np.ndarray, confidence: np.ndarray, version: np.ndarray) -> int | None:
        """Answered requests to the tracker, the detector and the change board; returns the
        detector id of the first (None without a detector).
        """
        orch = self.orchestrator
        # the tracker and the detector take the whole read in one call each (the copy runs
        # without the GIL, which this thread shares with a serving event loop); the board
        # takes one answer at a time
        orch.tracker.record_batch("fleet", latency_ms, confidence)
        first = None if orch.detector is None else orch.detector.record_requests(latency_ms, confidence)
        answered = orch.changes.answered
        for lat, conf, answering in zip(latency_ms.tolist(), confidence.tolist(), _versions(version), strict=True):
            answered(answering, lat, conf)
        return first

    def feed_records(self, latency_ms: np.ndarray, confidence: np.ndarray, version: np.ndarray) -> None:
        """Request records of another machine (the :class:`~vortex.serving.replica.SpoolMerger`'s,
        in timestamp order) to the tracker, the detector and the change board, as :meth:`pump`
        feeds this machine's. Safe from another thread than the pump's.
        """
        with self._feeding:
            self._answered(latency_ms, confidence, version)
            self.counts["remote_records"] += len(latency_ms)

    def _pump_samples(self, batch: Any, detector: Any, trainer: Any, changes: Any) -> int:
        """The samples of a pump's read (see :meth:`pump`); returns how many."""
        n = 0
        for rows in batch.samples.values():
            self.counts["lost_samples"] += rows.lost
            if not len(rows):
                continue
            self._labelled(rows, detector, changes)
            if trainer is not None:
                trainer.add_samples(rows.features, rows.labels, confidences=rows.confidence,
                                    errors=rows.error, episodes=rows.episode)
            n += len(rows)
            self.counts["samples"] += len(rows)
        if detector is not None and self._overtaken:
            self._link_overtaken(detector)
        return n

    def _labelled(self, rows: Any, detector: Any, changes: Any) -> None:
        """The labelled samples' figures to the change board and their errors to the detector."""
        known = np.flatnonzero(np.isfinite(rows.error))
        if not len(known):
            return
        error_column = rows.error[known]
        errors = error_column.tolist()
        if changes.needs_observations:
            labelled = changes.labelled
            for version, error, miss, nll, conf in zip(
                    _versions(rows.version[known]), errors, rows.misclassified[known].tolist(),
                    rows.nll[known].tolist(), rows.confidence[known].tolist(), strict=True):
                labelled(version, error, None if miss != miss else miss, None if nll != nll else nll, conf)
        if detector is None:
            return
        workers, requests = rows.worker[known], rows.request[known]
        ids = self._links.find(workers, requests)
        record_error = detector.record_error
        found = ids >= 0
        for detector_id, error in zip(ids[found].tolist(), error_column[found].tolist(), strict=True):
            record_error(detector_id, error)
        self.counts["linked_errors"] += int(found.sum())
        for i in np.flatnonzero(~found).tolist():
            self._overtaken.append((int(workers[i]), int(requests[i]), errors[i], self._pumps))

    def _link_overtaken(self, detector: Any) -> None:
        """Errors whose request's record was not read yet: linked once it is; after
        ``_LINK_PATIENCE`` pumps (or when the request is known to be gone), counted on the
        newest record of its worker still without an error (the error rate stays the
        fleet's), or dropped from the detector when no record of that worker is known.
        """
        waiting = []
        for worker, request, error, since in self._overtaken:
            found = int(self._links.find(np.array([worker], np.uint64), np.array([request]))[0])
            if found >= 0:
                self.counts["linked_errors"] += 1
            elif self._links.not_read_yet(worker, request) and self._pumps - since < _LINK_PATIENCE:
                waiting.append((worker, request, error, since))
                continue
            else:
                newest = self._links.newest_unlabelled(worker)
                self.counts["unlinked_errors" if newest is not None else "dropped_errors"] += 1
                if newest is None:
                    continue
                found = newest
            detector.record_error(found, error)
        self._overtaken = waiting[-_MAX_OVERTAKEN:]

    def commit(self) -> None:
        """Save the buffer, then commit the fleet's cursors (never the other way round)."""
        trainer = self.orchestrator.trainer
        if trainer is not None and not trainer.persist_buffer_covering():
            log.warning("buffer not saved; the fleet's cursors are not committed")
            return
        self.fleet.commit()
        self.counts["commits"] += 1

    # ------------------------------------------------------------------ status
    def _publish_interval(self) -> float:
        """``publish_interval`` while the status is read (one ``stat``), else the idle one."""
        try:
            read_ago = time.time() - os.stat(self._wanted).st_mtime
        except FileNotFoundError:
            return self.idle_publish_interval
        return self.publish_interval if read_ago < STATUS_WANTED_SECS else self.idle_publish_interval

    def status(self) -> dict[str, Any]:
        """The orchestrator's status plus the fleet's."""
        status = self.orchestrator.system_status().to_dict()
        status["control"] = {"pid": os.getpid(), "started_at": self.started_at, **self.counts,
                             "retired_workers": self.fleet.retired_workers}
        status["workers"] = [vars(w) for w in self.fleet.workers()]
        return status

    def publish(self) -> None:
        """Write :meth:`status` to ``HomeLayout.control_status`` (atomically)."""
        text = json.dumps(self.status(), default=_json_default, allow_nan=True)
        atomic_write_text(self.layout.control_status, text)


def check_nice(nice: int) -> int:
    """``nice`` if it is a niceness increment a process may apply to itself (0..19), else
    ``ValueError`` naming it.
    """
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
        raise ValueError(f"nice={nice!r}: must be an integer in 0..19 (only lowering a "
                         "priority needs no privilege)")
    return nice


class ControlStandby:
    """Waits for the home's control-plane lock and runs a :class:`ControlPlane` once it has it.

    With ``spec.fleet_url`` (replicas on several machines, docs/DISTRIBUTED.md), holding the
    lock makes this process its machine's contender for the fleet's lease
    (:class:`~vortex.serving.lease.Lease`): while another machine holds the lease it runs a
    :class:`~vortex.serving.replica.SpoolWriter`; holding both, it runs the control plane and a
    :class:`~vortex.serving.replica.SpoolMerger`; when the lease is lost it stops them and
    releases the lock (the machine's next holder spools again).

    Parameters
    ----------
    spec
        The service.
    interval
        Seconds between two attempts at the lock.
    nice
        Added to the niceness of the standby's thread, and so of every thread the control plane
        starts (on Linux each thread has its own niceness and a new thread inherits its
        creator's): 0 to 19. The sidecar's default (:func:`run_control`) is 10, so that the
        serving processes of the machine win the CPU; a serving worker's is 0, because a
        lowered thread that holds the GIL when it is preempted keeps that worker's event loop
        waiting longer (a priority inversion the GIL cannot see). Ignored off Linux.
    plane_kwargs
        Passed to :class:`ControlPlane`.
    """

    def __init__(self, spec: ServiceSpec, *, interval: float = 0.5, nice: int = 0, **plane_kwargs: Any) -> None:
        self.spec = spec
        self.interval = interval
        self.nice = check_nice(nice)
        self.lock = ControlLock(os.path.abspath(spec.home))
        self.plane: ControlPlane | None = None
        self._plane_kwargs = plane_kwargs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.acquired = threading.Event()
        self.lease: Any = None    # the fleet's Lease while this process contends for it
        self.spooler: Any = None  # the SpoolWriter while this process spools its machine's samples

    def start(self) -> None:
        """Start trying in a background thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vortex-standby", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.nice and sys.platform.startswith("linux"):
            tid = threading.get_native_id()  # this thread only (PRIO_PROCESS takes a tid on Linux)
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
        while not self._stop.is_set():
            try:
                if self.lock.try_acquire():
                    if self.spec.fleet_url is not None:
                        self._serve_fleet()
                    else:
                        plane = ControlPlane(self.spec, **self._plane_kwargs)
                        plane.start()
                        self.plane = plane
                        self.acquired.set()
                        return
            except Exception:  # e.g. a damaged file under the home: give the role up, retry
                log.exception("could not start the control plane")
                self.lock.release()
            self._stop.wait(self.interval)

    def _serve_fleet(self) -> None:
        """Holding the machine's lock: spool, or run the control plane while holding the lease;
        returns (the lock released) when the lease is lost or the standby stops.
        """
        from .lease import Lease
        from .replica import SpoolMerger, SpoolWriter

        spec = self.spec
        lease = Lease(spec.fleet_url or "", dict(spec.storage_options), ttl_secs=spec.lease_ttl_secs)
        spooler = SpoolWriter(spec)
        writer: SpoolWriter | None = spooler
        merger: SpoolMerger | None = None
        self.lease = lease
        try:
            spooler.start()
            self.spooler = spooler
            lease.start()
            while not lease.held:  # Lease.held checks the deadline: it is the watchdog too
                if self._stop.wait(0.05):
                    return
            self.spooler = None
            spooler.stop()
            writer = None
            self.plane = ControlPlane(spec, **self._plane_kwargs)
            merger = SpoolMerger(spec, self.plane.orchestrator.trainer, records=self.plane.feed_records)
            merger.start()
            self.plane.start()
            self.acquired.set()
            log.info("control plane of the fleet %s here (fencing %s)", spec.fleet_url, lease.fencing)
            while lease.held:
                if self._stop.wait(0.05):
                    return
            log.warning("fleet lease lost (%s): stopping this control plane", lease.lost_reason)
        finally:
            self.acquired.clear()
            if merger is not None:
                merger.stop(final=lease.held)
            if self.plane is not None:
                self.plane.stop()
                self.plane = None
            if writer is not None:
                self.spooler = None
                writer.stop()
            lease.stop()
            self.lock.release()

    @property
    def role(self) -> str:
        """``"control"`` (this process runs the control plane), ``"spool"`` (it spools its
        machine's samples to the fleet's control plane) or ``"standby"``.
        """
        return "control" if self.plane is not None else "spool" if self.spooler is not None else "standby"

    def stop(self) -> None:
        """Stop waiting, or stop the control plane and release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        if self.plane is not None:
            self.plane.stop()
            self.plane = None
        self.lock.release()


def run_control(spec: ServiceSpec, stop: threading.Event | None = None, *, nice: int = 10) -> int:
    """Run the control plane of ``spec``'s home until SIGTERM or SIGINT (or ``stop``): wait
    for the role while another process holds it, then hold it, its threads ``nice`` lower in
    priority than this one (see :class:`ControlStandby`). Returns 0.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    os.makedirs(spec.home, exist_ok=True)
    if nice:  # a sidecar leading its own session (a service manager starts it so) is alone in its
        # autogroup, where its threads' niceness would rank it only against itself
        try:
            lower_session_group(nice)
        except OSError as exc:
            log.warning("could not lower the priority of this session's autogroup: %s", exc)
    standby = ControlStandby(spec, nice=nice)
    standby.start()
    print(f"vortex control: waiting for the control plane of {os.path.abspath(spec.home)} "
          f"(pid {os.getpid()})", flush=True)
    while not stop.is_set():
        if standby.acquired.wait(0.2):
            print("vortex control: holding the control plane", flush=True)
            stop.wait()
    standby.stop()
    return 0
