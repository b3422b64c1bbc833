"""The control plane: one per home, elected by a lock; everything slow runs here.

:class:`ControlPlane` is a :class:`vortex.Orchestrator` that serves no request itself: the
spec's ``configure`` attaches its detector, background trainer and RSI engine, and a pump
thread feeds them what every serving worker recorded in shared memory
(:class:`vortex.shm.FleetReader`): requests into the detector, the tracker and the RSI
watch; labelled samples into the training buffer. Registry writes (training swaps, cleanup)
and RSI applies happen only here. Its status is published to ``HomeLayout.control_status``
for the workers' ``/vortex/status`` and ``/vortex/events``.

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
import threading
import time
from collections import deque
from typing import Any

from .._io import atomic_write_text
from ..home import HomeLayout
from .pending import remove_dead_rings
from .spec import ServiceSpec

__all__ = ["ControlLock", "ControlPlane", "ControlStandby", "run_control"]

log = logging.getLogger(__name__)

_CLEANUP_SECS = 10.0


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
        Seconds between two reads of the workers' segments.
    commit_interval
        Seconds between two saves of the buffer and commits of the fleet's cursors.
    publish_interval
        Seconds between two writes of the published status.
    """

    def __init__(self, spec: ServiceSpec, *, poll_interval: float = 0.05, commit_interval: float = 1.0,
                 publish_interval: float = 0.5) -> None:
        from ..orchestrator import Orchestrator
        from ..shm import FleetReader

        self.spec = spec
        self.layout = HomeLayout(os.path.abspath(spec.home))
        self.orchestrator = Orchestrator(spec.build_initial_model(), spec.model_factory, self.layout.root,
                                         feature_dim=spec.feature_dim, modes=spec.modes, task=spec.task,
                                         factory_kwargs=spec.factory_kwargs, pending_capacity=64)
        if spec.configure is not None:
            spec.configure(self.orchestrator)
        self.fleet = FleetReader(self.layout.root)
        self.poll_interval = poll_interval
        self.commit_interval = commit_interval
        self.publish_interval = publish_interval
        self.started_at = time.time()
        self.counts = {"records": 0, "samples": 0, "lost_records": 0, "lost_samples": 0, "commits": 0}
        self._awaiting: dict[str, deque[int]] = {}  # worker -> detector ids awaiting an error
        self._record = self.orchestrator.tracker.recorder("fleet")
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
        next_commit = next_publish = next_cleanup = 0.0
        while True:
            stopping = self._stop.is_set()
            try:
                self.pump()
                now = time.monotonic()
                if stopping or now >= next_commit:
                    self.commit()
                    next_commit = now + self.commit_interval
                if stopping or now >= next_publish:
                    self.publish()
                    next_publish = now + self.publish_interval
                if now >= next_cleanup:
                    remove_dead_rings(self.layout.root, self.spec.feedback_ttl_secs)
                    next_cleanup = now + _CLEANUP_SECS
            except Exception:  # the pump must outlive any one failure; the next pass retries
                log.exception("control plane pass failed")
            if stopping:
                return
            self._stop.wait(self.poll_interval)

    def pump(self) -> int:
        """Feed what the workers recorded since the last pump to the components; returns the
        number of records and samples read.
        """
        orch = self.orchestrator
        batch = self.fleet.read_new()
        detector, rsi, trainer = orch.detector, orch.rsi, orch.trainer
        watching = rsi is not None and rsi.needs_observations
        n = 0
        for name, records in batch.metrics.items():
            self.counts["lost_records"] += records.lost
            awaiting = self._awaiting.setdefault(name, deque(maxlen=1 << 16))
            for lat, conf in zip(records.latency_ms.tolist(), records.confidence.tolist(), strict=True):
                self._record(lat, conf)
                if detector is not None:
                    awaiting.append(detector.record_request(lat, conf))
                if watching:
                    rsi.observe(latency_ms=lat, confidence=conf)
            n += len(records)
            self.counts["records"] += len(records)
        for name, rows in batch.samples.items():
            self.counts["lost_samples"] += rows.lost
            if not len(rows):
                continue
            awaiting = self._awaiting.setdefault(name, deque(maxlen=1 << 16))
            for error in rows.error.tolist():
                if not math.isfinite(error):
                    continue
                # The error belongs to one of this worker's requests; which one is not carried
                # across processes: it goes to the oldest still awaiting one, so the window's
                # error rate is the fleet's.
                if detector is not None and awaiting:
                    detector.record_error(awaiting.popleft(), error)
                if watching:
                    rsi.observe(error=error)
            if trainer is not None:
                trainer.add_samples(rows.features, rows.labels, confidences=rows.confidence,
                                    errors=rows.error, episodes=rows.episode)
            n += len(rows)
            self.counts["samples"] += len(rows)
        return n

    def commit(self) -> None:
        """Save the buffer, then commit the fleet's cursors (never the other way round)."""
        trainer = self.orchestrator.trainer
        if trainer is not None and not trainer.persist_buffer_covering():
            log.warning("buffer not saved; the fleet's cursors are not committed")
            return
        self.fleet.commit()
        self.counts["commits"] += 1

    # ------------------------------------------------------------------ status
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
    plane_kwargs
        Passed to :class:`ControlPlane`.
    """

    def __init__(self, spec: ServiceSpec, *, interval: float = 0.5, **plane_kwargs: Any) -> None:
        self.spec = spec
        self.interval = interval
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
            trainer = self.plane.orchestrator.trainer
            if trainer is not None:
                merger = SpoolMerger(spec, trainer)
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


def run_control(spec: ServiceSpec, stop: threading.Event | None = None) -> int:
    """Run the control plane of ``spec``'s home until SIGTERM or SIGINT (or ``stop``): wait
    for the role while another process holds it, then hold it. Returns 0.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    os.makedirs(spec.home, exist_ok=True)
    standby = ControlStandby(spec)
    standby.start()
    print(f"vortex control: waiting for the control plane of {os.path.abspath(spec.home)} "
          f"(pid {os.getpid()})", flush=True)
    while not stop.is_set():
        if standby.acquired.wait(0.2):
            print("vortex control: holding the control plane", flush=True)
            stop.wait()
    standby.stop()
    return 0
