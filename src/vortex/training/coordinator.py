"""BackgroundTrainingCoordinator: triggers, worker processes, validation, registry and hot swap.

A run goes: snapshot of the newest ``max_samples_per_batch`` buffered samples → Arrow IPC
file → ``world_size`` worker processes (:mod:`vortex.training.worker`, torch DDP) → candidate
safetensors + validation of candidate and active model on the same held-out samples (done by
the worker, off the serving process) → registry entry → swap if ``auto_swap_models`` and the
improvement exceeds ``min_improvement_threshold`` with a confidence interval above zero.

After an automatic swap the coordinator watches ``watch_requests`` live observations of the
new version (:meth:`BackgroundTrainingCoordinator.observe_live`); if its live error is worse
than the old version's by more than ``watch_regression_margin`` (or its mean confidence
lower by more than that), it swaps back and records the rollback in the serving log.

A swap made while a run trains (``vortex models swap`` from another process,
:meth:`~BackgroundTrainingCoordinator.swap_to_version`, a watch's rollback) is served within a
second, and it wins over the run: when the run concludes, its candidate is validated again
against the version serving *then* (a validation-only worker), and swapped in only if it beats
that version by the usual threshold; the activation itself is a compare-and-swap on the
registry's active version, so a swap made during that last check is never overridden either.

While started, a housekeeping thread follows outside swaps and saves the sample buffer to
``<home>/buffer.arrow`` every ``buffer_persist_interval_secs``, so a killed serving process
loses at most that many seconds of samples. Nothing the background does (watch, rollback,
cleanup, persistence, following a swap) raises into a request: failures are logged once and
counted in :meth:`~BackgroundTrainingCoordinator.stats`.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from .._io import atomic_write_bytes, pid_alive, remove_orphan_temps
from ..changes import ChangeBoard
from ..config import BackgroundTrainingConfig, as_dict
from ..errors import ChecksumMismatchError, ModelSwapError, RegistryError, TrainingError, VersionNotFoundError
from ..home import HomeLayout
from .models import build_model
from .registry import ModelRegistry
from .slot import ModelSlot, prepare_model
from .statuses import RunStatus, VersionStatus
from .validation import ValidationResult, should_swap
from .worker import CANDIDATE_FILE, RESULT_FILE

__all__ = ["BackgroundTrainingCoordinator", "TrainingRun", "TrainingStats", "TrainingTrigger"]

log = logging.getLogger(__name__)

_HISTORY = 200  # runs kept in memory and in <home>/runs.json
_SYNC_SECS = 1.0  # how often the housekeeping thread checks the registry for an outside swap
_MAX_REVALIDATIONS = 3  # swaps during one run's conclusion after which it gives up swapping
_POLL_SECS = 0.05  # how often a run checks its workers, the cancel flag and the timeout


class TrainingTrigger(enum.Enum):
    """Why a training run started (an RSI trigger's reason is carried separately)."""

    SCHEDULED = "scheduled"
    MANUAL = "manual"
    RSI_TRIGGERED = "rsi_triggered"
    SAMPLE_THRESHOLD = "sample_threshold"

    @classmethod
    def parse(cls, value: TrainingTrigger | str) -> TrainingTrigger:
        """Accept a member, its value ("manual") or its name ("MANUAL")."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value.lower() in (member.value, member.name.lower()):
                    return member
        raise ValueError(f"trigger={value!r}: must be one of {[m.value for m in cls]}")


@dataclass
class TrainingRun:
    """Result of one training run.

    ``parent_version`` is the version the run started from; ``validated_against`` the version
    its candidate was finally compared with: the one serving when the run concluded (it differs
    from the parent when a swap happened during the run).

    ``status`` is a :class:`~vortex.training.statuses.RunStatus` (a ``str`` enum: "swapped",
    "rejected", "registered", "not_kept", "skipped", "failed", "timeout" or "cancelled").
    """

    run_id: int
    trigger: TrainingTrigger
    reason: str | None
    status: RunStatus = RunStatus.RUNNING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    samples: int = 0
    train_samples: int = 0
    holdout_samples: int = 0
    parent_version: int | None = None
    validated_against: int | None = None
    version: int | None = None
    swapped: bool = False
    train_loss: float | None = None
    validation: dict[str, Any] | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        d = asdict(self)
        d["trigger"] = self.trigger.value
        return d


@dataclass
class TrainingStats:
    """Counters and state of the coordinator (see :meth:`BackgroundTrainingCoordinator.stats`).

    ``background_errors`` counts failures of background work that must never reach a request
    (the post-swap watch and its rollback, registry cleanup, buffer persistence, following an
    outside swap); ``last_background_error`` describes the latest.
    """

    running: bool
    run_in_progress: bool
    pending_trigger: str | None
    runs_started: int
    runs_completed: int
    runs_failed: int
    runs_cancelled: int
    runs_skipped: int
    samples_trained: int
    current_version: int | None
    swaps: int
    rollbacks: int
    best_val_accuracy: float | None
    last_error: str | None
    buffer_size: int
    watching: dict[str, Any] | None
    last_run: dict[str, Any] | None
    background_errors: int = 0
    last_background_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


@dataclass
class _Watch:
    new_version: int
    old_version: int
    old_model: Any
    baseline_error: float
    baseline_confidence: float
    errors: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failure(procs: list[subprocess.Popen], logs: list[str], settle_secs: float = 1.0) -> str:
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


def _ended(returncode: int) -> str:
    return f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def _drop_bulky(run_dir: str) -> None:
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


class BackgroundTrainingCoordinator:
    """Trains new model versions in worker processes and hot-swaps the better ones.

    Parameters
    ----------
    config
        Training settings.
    model
        The model to serve initially.  If the registry under ``home`` already has an active
        version (a restart), its weights are loaded into ``model`` instead.
    model_factory
        ``"package.module:function"`` building the same architecture; worker processes
        import it, so it must not live in ``__main__``.
    home
        Directory for all state: the registry (``<home>/models`` unless
        ``config.checkpoint_dir``), run directories and ``runs.json``.
    feature_dim
        Width of a sample's feature vector.
    label_dtype
        Label dtype of the sample buffer ("int64" for classification).
    buffer
        An existing :class:`~vortex.training.SampleBuffer` to train from; default the buffer
        saved in ``<home>/buffer.arrow`` (seq numbering continues), else a new one of
        ``config.buffer_capacity``. Either way it is persisted there (see
        ``config.buffer_persist_interval_secs``).
    factory_kwargs
        Keyword arguments of ``model_factory`` (JSON-serialisable).
    changes
        The :class:`~vortex.changes.ChangeBoard` shared with the other components that change
        what serves (the orchestrator's, shared with its RSI engine): every swap is announced
        on it, and any change ends the running post-swap watch and restarts the live baseline.
        Default: one of its own.
    """

    def __init__(self, config: BackgroundTrainingConfig, model: Any, model_factory: str,
                 home: str | os.PathLike, feature_dim: int, label_dtype: str = "int64",
                 buffer: Any = None, factory_kwargs: dict[str, Any] | None = None,
                 changes: ChangeBoard | None = None) -> None:
        import torch

        if not isinstance(config, BackgroundTrainingConfig):
            raise ValueError(f"config must be a BackgroundTrainingConfig, got {type(config).__name__}")
        if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"feature_dim={feature_dim!r}: must be a positive integer")
        self.config = config
        self.model_factory = model_factory
        self.factory_kwargs = dict(factory_kwargs or {})
        json.dumps(self.factory_kwargs)  # the worker receives them as JSON
        build_model(model_factory, self.factory_kwargs)  # fail now, not in a worker, if it does not resolve
        self.home = os.path.abspath(os.fspath(home))
        self.layout = HomeLayout(self.home)
        self.feature_dim = feature_dim
        os.makedirs(self.home, exist_ok=True)
        remove_orphan_temps(self.home)  # of runs.json or buffer.arrow writes killed mid-way
        self.registry = ModelRegistry(config.checkpoint_dir or self.layout.models)
        self.buffer_path = self.layout.buffer
        self._persisted_seq: int | None = None  # next_seq of the last saved buffer
        if buffer is None:
            from . import SampleBuffer

            buffer = SampleBuffer(feature_dim, capacity=config.buffer_capacity, label_dtype=label_dtype)
            if os.path.exists(self.buffer_path):
                buffer.load_into(self.buffer_path)
                self._persisted_seq = buffer.next_seq
                log.info("reloaded %d buffered samples from %s", len(buffer), self.buffer_path)
        self._buffer = buffer
        self._persist_lock = threading.Lock()
        active = self.registry.active_version
        if active is None:
            active = self.registry.register(model, {"trigger": "initial", "samples": 0, "epochs": 0})
            self.registry.set_active(active, "initial")
        else:
            try:
                model.load_state_dict(self.registry.load(active))
            except RuntimeError as exc:
                raise ModelSwapError(f"active version {active} of {self.registry.root} does not fit "
                                     f"the given model: {exc}") from exc
        self._example = torch.zeros(1, feature_dim)
        self._slot = ModelSlot(model, active, example=self._example)
        self._models: OrderedDict[int, tuple[str, Any]] = OrderedDict()
        self._remember(active, self.registry.get(active)["sha256"], model)

        self._cond = threading.Condition()
        self._run_lock = threading.Lock()
        self._swap_lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._stopping = False
        self._pending: tuple[TrainingTrigger, str | None] | None = None
        self._in_run = False
        self._cancel = threading.Event()
        self._procs: list[subprocess.Popen] = []
        self._seq_at_last_run = 0
        self._next_run_id = 1
        self._history: deque[TrainingRun] = deque(maxlen=_HISTORY)
        self._load_history()
        self._drop_leftovers()
        self._counts = dict(started=0, completed=0, failed=0, cancelled=0, skipped=0,
                            samples=0, swaps=0, rollbacks=0, background_errors=0)
        self._best_acc: float | None = None
        self._last_error: str | None = None
        self._last_background_error: str | None = None
        self._background_errors_seen: set[str] = set()
        self._live: dict[int, deque[tuple[float, float]]] = {}
        self._watch: _Watch | None = None
        self._live_lock = threading.Lock()
        self.changes = changes if changes is not None else ChangeBoard()
        self.changes.subscribe(self._on_change)

    # ------------------------------------------------------------------ properties
    @property
    def slot(self) -> ModelSlot:
        """The :class:`ModelSlot` serving the active model."""
        return self._slot

    @property
    def buffer(self) -> Any:
        """The :class:`~vortex.training.SampleBuffer` runs train from."""
        return self._buffer

    # ------------------------------------------------------------------ samples
    def add_samples(self, features: Any, labels: Any, confidences: Any = None, errors: Any = None,
                    episodes: Any = None) -> int:
        """Append a batch of labelled samples; returns the first sequence number.

        Fires the SAMPLE_THRESHOLD trigger once ``min_samples_for_training`` new samples
        arrived since the last run's snapshot.
        """
        first = self._buffer.extend(features, labels, confidences=confidences, errors=errors,
                                    episodes=episodes)
        self._check_threshold()
        return first

    def add_sample(self, features: Any, label: Any, confidence: float = 1.0,
                   error: float = math.nan, episode: int = 0) -> int:
        """Append one labelled sample; returns its sequence number (see :meth:`add_samples`)."""
        seq = self._buffer.push(features, label, confidence=confidence, error=error, episode=episode)
        self._check_threshold(seq + 1)
        return seq

    def _check_threshold(self, next_seq: int | None = None) -> None:
        # Unlocked read first: while a trigger is pending, every new sample is coalesced into it
        # anyway, and the request path should not take the lock for that.
        if not self.config.enabled or self._pending is not None:
            return
        if next_seq is None:
            next_seq = self._buffer.next_seq
        if next_seq - self._seq_at_last_run >= self.config.min_samples_for_training:
            with self._cond:
                if self._pending is None:  # otherwise coalesced into the pending request
                    self._pending = (TrainingTrigger.SAMPLE_THRESHOLD, None)
                    self._cond.notify_all()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the background threads: training (scheduled and pending triggers) and
        housekeeping (following outside swaps, saving the buffer).
        """
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._keeper_stop.clear()
            self._thread = threading.Thread(target=self._loop, name="vortex-training", daemon=True)
            self._keeper = threading.Thread(target=self._housekeeping, name="vortex-training-keeper",
                                            daemon=True)
            self._thread.start()
            self._keeper.start()
        log.info("background training started (home %s)", self.home)

    def stop(self, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop the background threads; wait for a running run, or kill it if ``cancel``.

        A pending trigger stays pending (it runs after the next :meth:`start`). The buffer is
        saved a last time, so a clean stop loses no sample.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._keeper_stop.set()
        if cancel:
            self.cancel_run()
        for thread in (self._thread, self._keeper):
            if thread is not None:
                thread.join(timeout)
        self._thread = self._keeper = None
        self.persist_buffer()

    def persist_buffer(self) -> bool:
        """Save the sample buffer to ``<home>/buffer.arrow`` now, if it changed since the last
        save; True if it saved. Failures are logged and counted, never raised.

        The housekeeping thread calls this every ``buffer_persist_interval_secs``; the save is
        a C++ snapshot copy, Arrow serialisation, a sha256 and one native write, each run with
        the GIL released, so serving threads keep running meanwhile.
        """
        if not self._persist_lock.acquire(blocking=False):
            return False  # a save is under way in another thread
        try:
            if self._buffer.next_seq == self._persisted_seq:
                return False
            self._persisted_seq = self._buffer.save(self.buffer_path)
            return True
        except Exception as exc:
            self._background_failure("saving the sample buffer", exc)
            return False
        finally:
            self._persist_lock.release()

    def _housekeeping(self) -> None:
        """Follow outside swaps within a second and save the buffer periodically, during runs
        too (runs happen on the training thread, not here).
        """
        interval = self.config.buffer_persist_interval_secs
        next_persist = time.monotonic() + interval
        while not self._keeper_stop.wait(_SYNC_SECS if not interval else
                                         max(0.0, min(_SYNC_SECS, next_persist - time.monotonic()))):
            self._sync_external()
            if interval and time.monotonic() >= next_persist:
                self.persist_buffer()
                next_persist = time.monotonic() + interval

    def _background_failure(self, what: str, exc: BaseException) -> None:
        """Record a failure of background work: counted every time, logged once per kind."""
        message = f"{what}: {type(exc).__name__}: {exc}"
        self._counts["background_errors"] += 1
        self._last_background_error = message
        if message not in self._background_errors_seen and len(self._background_errors_seen) < 100:
            self._background_errors_seen.add(message)
            log.error("%s (logged once; see stats().background_errors)", message, exc_info=exc)

    def cancel_run(self) -> bool:
        """Kill the workers of the run in progress (it ends "cancelled"); False if none is."""
        with self._cond:
            if not self._in_run:
                return False
            self._cancel.set()
        return True

    def worker_pids(self) -> list[int]:
        """Process ids of the current run's worker processes (empty when none is running)."""
        return [p.pid for p in self._procs]

    def is_running(self) -> bool:
        """True while the background thread is started."""
        return self._thread is not None and self._thread.is_alive()

    def trigger_training(self, trigger: TrainingTrigger | str = TrainingTrigger.MANUAL,
                         reason: str | None = None) -> bool:
        """Request a run.  Returns True if it was queued, False if it was coalesced into an
        already pending request (or training is disabled).  A request made during a run
        starts one run after it; requests are never stacked: the one run answers both, and
        carries the trigger and reason of a request with a reason (an RSI patch, a person)
        over those of a pending one without (a sample threshold, the schedule). Runs only
        execute while the coordinator is started (:meth:`start`); use :meth:`run_once` for a
        synchronous run.
        """
        trig = TrainingTrigger.parse(trigger)
        if not self.config.enabled:
            return False
        with self._cond:
            if self._pending is not None:
                log.debug("trigger %s coalesced into pending %s", trig.value, self._pending[0].value)
                if reason is not None and self._pending[1] is None:
                    self._pending = (trig, reason)
                return False
            self._pending = (trig, reason)
            self._cond.notify_all()
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is in progress or pending; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._in_run or (self._pending is not None and self.is_running()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 0.5)
        return True

    def _loop(self) -> None:
        interval = self.config.training_interval_secs
        next_scheduled = time.monotonic() + interval
        while True:
            with self._cond:
                if not self._stopping and self._pending is None:
                    remaining = next_scheduled - time.monotonic()
                    if remaining <= 0:
                        self._pending = (TrainingTrigger.SCHEDULED, None)
                        next_scheduled = time.monotonic() + interval
                    else:
                        self._cond.wait(remaining)
                if self._stopping:
                    return
                job = self._pending
                if job is not None and not self.config.enabled:
                    self._pending = job = None
            if job is None:
                continue
            try:
                self._run(*job, from_loop=True)
            except Exception:  # _run records failures; this guards the thread against bugs
                log.exception("background training run crashed")

    # ------------------------------------------------------------------ one run
    def run_once(self, trigger: TrainingTrigger | str = TrainingTrigger.MANUAL,
                 reason: str | None = None) -> TrainingRun:
        """Run one training run now, in this thread, and return its result.

        Never raises for a failed run: the result's ``status`` says "failed" / "timeout" /
        "cancelled" and ``error`` says why; the registry and the served model are unchanged.
        """
        return self._run(TrainingTrigger.parse(trigger), reason, from_loop=False)

    def _run(self, trig: TrainingTrigger, reason: str | None, from_loop: bool) -> TrainingRun:
        with self._run_lock:
            with self._cond:
                if from_loop and self._stopping:  # stop() came between picking the job and now
                    return TrainingRun(run_id=0, trigger=trig, reason=reason, status=RunStatus.CANCELLED,
                                       error="coordinator stopping")
                self._pending = None
                self._in_run = True  # from here on, cancel_run() reaches this run
                run = TrainingRun(run_id=self._next_run_id, trigger=trig, reason=reason)
                self._next_run_id += 1
            try:
                self._execute(run)
            except Exception as exc:
                run.status = RunStatus.CANCELLED if self._cancel.is_set() else (
                    RunStatus.TIMEOUT if isinstance(exc, TimeoutError) else RunStatus.FAILED)
                run.error = f"{type(exc).__name__}: {exc}"
                # a cancellation was asked for (e.g. by stop()): worth a line, not a warning
                log.log(logging.INFO if run.status == RunStatus.CANCELLED else logging.WARNING,
                        "training run %d %s: %s", run.run_id, run.status, run.error)
            finally:
                run.finished_at = time.time()
                self._finish(run)
            return run

    def _finish(self, run: TrainingRun) -> None:
        c = self._counts
        if run.status == RunStatus.SKIPPED:
            c["skipped"] += 1
        elif run.status in (RunStatus.FAILED, RunStatus.TIMEOUT):
            c["failed"] += 1
            self._last_error = run.error
        elif run.status == RunStatus.CANCELLED:
            c["cancelled"] += 1
        else:
            c["completed"] += 1
            c["samples"] += run.train_samples
            acc = (run.validation or {}).get("candidate_accuracy")
            if acc is not None and not math.isnan(acc):
                self._best_acc = acc if self._best_acc is None else max(self._best_acc, acc)
        self._history.append(run)
        try:
            data = json.dumps([r.to_dict() for r in self._history], allow_nan=True).encode()
            atomic_write_bytes(self.layout.runs_file, data)
        except OSError as exc:
            log.warning("could not write the run history: %s", exc)
        with self._cond:
            self._in_run = False
            self._cancel.clear()
            self._cond.notify_all()

    def _execute(self, run: TrainingRun) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        if not cfg.enabled:
            run.status, run.error = RunStatus.SKIPPED, "training is disabled (config.enabled=False)"
            return
        if len(self._buffer) < cfg.min_samples_for_training:
            run.status = RunStatus.SKIPPED
            run.error = (f"{len(self._buffer)} buffered samples < min_samples_for_training="
                         f"{cfg.min_samples_for_training}")
            return
        self._counts["started"] += 1
        self._seq_at_last_run = self._buffer.next_seq
        snap = self._buffer.snapshot(max_rows=cfg.max_samples_per_batch)
        run.samples = int(snap.seq.shape[0])
        run_dir = self.layout.run_dir(run.run_id, os.getpid())
        os.makedirs(run_dir, exist_ok=True)
        parent = self.registry.active_version
        run.parent_version = parent
        ok = False
        try:
            snap_path = os.path.join(run_dir, "snapshot.arrow")
            snap.write_ipc(snap_path)
            run.timings["snapshot"] = time.perf_counter() - t0
            t = time.perf_counter()
            self._run_workers(run_dir, snap_path, parent, self.config.world_size, run.run_id)
            run.timings["workers"] = time.perf_counter() - t
            t = time.perf_counter()
            self._conclude(run, run_dir, snap_path, parent)
            run.timings["conclude"] = time.perf_counter() - t
            ok = True
        finally:
            run.timings["total"] = time.perf_counter() - t0
            if ok:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                _drop_bulky(run_dir)

    def _worker_env(self, rank: int, world: int, port: int) -> dict[str, str]:
        env = dict(os.environ)
        # the worker must import the same vortex and the same model factory as this process
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS=str(self.config.worker_threads),
                   # the worker exits when this process dies (see worker.die_with_parent)
                   VORTEX_PARENT_PID=str(os.getpid()))
        return env

    def _run_workers(self, out_dir: str, snap_path: str, init_version: int | None, world_size: int,
                     run_id: int, candidate: str | None = None) -> None:
        """Run ``world_size`` worker processes writing into ``out_dir``; raise on any failure.

        With ``candidate`` (a safetensors file), the one worker only validates it against
        ``init_version`` on the snapshot's held-out rows instead of training.
        """
        cfg = self.config
        flux = as_dict(cfg.flux)
        # -P: the worker must import the vortex this process runs, never a source checkout
        # that happens to be the current directory.
        cmd = [sys.executable, "-P", "-m", "vortex.training.worker", "--snapshot", snap_path,
               "--out", out_dir, "--factory", self.model_factory,
               "--factory-kwargs", json.dumps(self.factory_kwargs), "--task", cfg.task,
               "--epochs", str(cfg.num_epochs), "--lr", repr(cfg.learning_rate),
               "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed + run_id),
               "--threads", str(cfg.worker_threads), "--nice", str(cfg.worker_nice),
               "--flux", json.dumps(flux), "--confidence-level", repr(cfg.confidence_level)]
        if cfg.worker_sched_idle:
            cmd.append("--sched-idle")
        if init_version is not None:
            cmd += ["--registry", self.registry.root, "--init-version", str(init_version)]
        if candidate is not None:
            cmd += ["--candidate", candidate]
        port = _free_port() if world_size > 1 else 0
        deadline = time.monotonic() + cfg.run_timeout_secs
        procs: list[subprocess.Popen] = []
        os.makedirs(out_dir, exist_ok=True)
        logs = [os.path.join(out_dir, f"worker-{r}.log") for r in range(world_size)]
        try:
            for rank in range(world_size):
                with open(logs[rank], "wb") as out:
                    procs.append(subprocess.Popen(cmd, env=self._worker_env(rank, world_size, port),
                                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                                  start_new_session=True))
            self._procs = procs
            while True:
                codes = [p.poll() for p in procs]
                if any(c not in (None, 0) for c in codes):
                    raise TrainingError(_failure(procs, logs))
                if all(c == 0 for c in codes):
                    return
                if self._cancel.wait(_POLL_SECS):
                    raise TrainingError("run cancelled (cancel_run() or stop(cancel=True))")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run exceeded run_timeout_secs={cfg.run_timeout_secs}")
        finally:
            self._procs = []
            for p in procs:
                if p.poll() is None:
                    try:  # the worker is a session leader: kill its whole process group
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                p.wait()

    def _validate_against(self, run: TrainingRun, run_dir: str, snap_path: str,
                          version: int) -> dict[str, Any] | None:
        """The run's candidate compared with ``version`` on the same held-out rows, by a
        validation-only worker (the serving process does no model evaluation).
        """
        out = os.path.join(run_dir, f"against-v{version}")
        self._run_workers(out, snap_path, version, 1, run.run_id,
                          candidate=os.path.join(run_dir, CANDIDATE_FILE))
        with open(os.path.join(out, RESULT_FILE), "rb") as f:
            return json.loads(f.read())["validation"]

    def _decide(self, validation: dict[str, Any] | None) -> tuple[bool, str]:
        """Whether a candidate with this validation is better enough to serve, and why."""
        if validation is None:
            return False, "no held-out samples to validate on"
        vr = ValidationResult(**validation)
        return should_swap(vr, self.config.min_improvement_threshold), (
            f"improvement {vr.improvement_pct:+.2f}% [{vr.ci_low:+.2f}, {vr.ci_high:+.2f}] at "
            f"{vr.confidence_level:.0%} vs threshold {self.config.min_improvement_threshold}%")

    def _conclude(self, run: TrainingRun, run_dir: str, snap_path: str, parent: int | None) -> None:
        """Register the run's candidate and swap it in if it beats what serves *now*.

        A swap made during the run (by a person, the API or a rollback) wins over the run: the
        candidate is validated again against the version serving at this point, and activated
        with a compare-and-swap on that version, so a swap made meanwhile is not overridden.
        """
        cfg = self.config
        with open(os.path.join(run_dir, RESULT_FILE), "rb") as f:
            result = json.loads(f.read())
        with open(os.path.join(run_dir, CANDIDATE_FILE), "rb") as f:
            candidate = f.read()
        run.train_samples = result["train_samples"]
        run.holdout_samples = result["holdout_samples"]
        run.train_loss = result["train_loss"]
        run.timings.update({f"worker_{k}": v for k, v in result["timings"].items()})
        run.validation = result["validation"]
        run.validated_against = parent
        self._sync_external()  # serve what the registry says before comparing with it
        for _ in range(_MAX_REVALIDATIONS + 1):
            serving = self.registry.active_version
            if serving != run.validated_against and run.validation is not None and serving is not None:
                log.info("run %d: version %s was made active during the run; validating the "
                         "candidate against it", run.run_id, serving)
                run.validation = self._validate_against(run, run_dir, snap_path, serving)
                run.validated_against = serving
            better, why = self._decide(run.validation)
            if run.validated_against != parent:
                why += f" over version {run.validated_against} (swapped in during the run)"
            swap = better and cfg.auto_swap_models
            if run.version is None:
                if not (cfg.enable_versioning or swap):
                    run.status = RunStatus.REJECTED if not better else RunStatus.NOT_KEPT
                    log.info("run %d: candidate not kept (%s)", run.run_id, why)
                    return
                v = run.validation or {}
                run.version = self.registry.register(candidate, {
                    "parent": parent, "trigger": run.trigger.value, "samples": run.samples,
                    "epochs": result["epochs"], "train_loss": run.train_loss,
                    "val_loss": v.get("candidate_loss"), "val_accuracy": v.get("candidate_accuracy"),
                    "improvement_pct": v.get("improvement_pct"), "ci_low": v.get("ci_low"),
                    "ci_high": v.get("ci_high"),
                    "status": VersionStatus.CANDIDATE if better else VersionStatus.REJECTED})
            elif not better:
                self.registry.set_status(run.version, VersionStatus.REJECTED)
            if not swap:
                run.status = RunStatus.REGISTERED if better else RunStatus.REJECTED
                break
            reason = f"auto: {run.trigger.value}" + (f" ({run.reason})" if run.reason else "") + f", {why}"
            if self._swap(run.version, reason, watch=True, expect_active=run.validated_against):
                run.status, run.swapped = RunStatus.SWAPPED, True
                break
            self._sync_external()  # another swap came first: judge again against that one
        else:
            run.status = RunStatus.REGISTERED
            why += f"; not swapped: the active version changed {_MAX_REVALIDATIONS + 1} times meanwhile"
        log.info("run %d: version %s %s (%s)", run.run_id, run.version, run.status, why)
        try:
            self.cleanup()
        except Exception as exc:  # the run itself succeeded; a failed cleanup is retried next run
            self._background_failure("registry cleanup", exc)

    # ------------------------------------------------------------------ versions and swaps
    def _load_prepared(self, version: int) -> Any:
        """A model with ``version``'s verified weights, eval'd and warmed up.

        The last ``model_cache_size`` prepared models are kept, so a rollback to a recent
        version is a reference swap; the weights file is still checked against its sha256.
        """
        data, sha = self.registry.load_verified(version)
        cached = self._models.get(version)
        if cached is not None and cached[0] == sha:
            self._models.move_to_end(version)
            return cached[1]
        from safetensors.torch import load

        model = build_model(self.model_factory, self.factory_kwargs)
        try:
            model.load_state_dict(load(data))
        except RuntimeError as exc:
            raise ModelSwapError(f"version {version} does not fit the model factory: {exc}") from exc
        prepare_model(model, self._example)
        self._remember(version, sha, model)
        return model

    def _remember(self, version: int | None, sha: str, model: Any) -> None:
        if version is None or self.config.model_cache_size == 0:
            return
        self._models[version] = (sha, model)
        self._models.move_to_end(version)
        while len(self._models) > self.config.model_cache_size:
            self._models.popitem(last=False)

    def _swap(self, version: int, reason: str, watch: bool, expect_active: Any = ...) -> bool:
        """Serve ``version`` and record it; False if ``expect_active`` (see
        :meth:`ModelRegistry.set_active`) no longer serves (nothing changed then).
        """
        with self._swap_lock:
            model = self._load_prepared(version)
            old_version = self._slot.version
            if not self.registry.set_active(version, reason, verify=False,  # _load_prepared verified
                                            expect_active=expect_active):
                return False
            old = self._slot.swap(model, version, prepared=True)
            self._counts["swaps"] += 1
            new_watch = None
            with self._live_lock:  # the baseline: what the old version served since the last change
                history = self._live.get(old_version) if old_version is not None else None
                if watch and self.config.watch_requests > 0 and history and old_version is not None:
                    errs = [e for e, _ in history]
                    confs = [c for _, c in history if not math.isnan(c)]
                    new_watch = _Watch(version, old_version, old.model, sum(errs) / len(errs),
                                       sum(confs) / len(confs) if confs else math.nan)
                elif watch and self.config.watch_requests > 0:
                    log.info("no live observations of version %s since the last change: post-swap "
                             "watch skipped", old_version)
            self.changes.changed("training", f"version {version} swapped in ({reason})")
            with self._live_lock:
                self._watch = new_watch
        return True

    def _on_change(self, change: Any) -> str | None:
        """A change to what serves (see :mod:`vortex.changes`): end the post-swap watch and
        start the live baseline anew; returns what watch it ended.
        """
        with self._live_lock:
            w, self._watch = self._watch, None
            self._live.clear()
        if w is None:
            return None
        return (f"post-swap watch of model version {w.new_version} ({len(w.errors)} of "
                f"{self.config.watch_requests} requests)")

    def _sync_external(self) -> None:
        """Serve the registry's active version if another process (``vortex models swap``)
        changed it. Never raises: a failure is logged once and counted.
        """
        try:
            if self.registry.active_version in (None, self._slot.version):
                return
            with self._swap_lock:
                active = self.registry.active_version
                if active is None or active == self._slot.version:
                    return
                self._slot.swap(self._load_prepared(active), active, prepared=True)
                self.changes.changed("training", f"version {active} made active outside this process")
            log.info("serving version %d, made active outside this process", active)
        except Exception as exc:
            self._background_failure("following the registry's active version", exc)

    def swap_to_version(self, version: int, reason: str = "manual") -> None:
        """Serve ``version`` from the registry (roll back or forward).

        The weights are verified, loaded into a new model from the factory and warmed up
        before the swap; on any failure the current model keeps serving. A run in progress
        does not override this swap: its candidate must beat ``version`` to replace it.
        """
        try:
            self._swap(int(version), reason, watch=False)
        except (RegistryError, ModelSwapError):
            raise
        except Exception as exc:
            raise ModelSwapError(f"could not swap to version {version}: {exc}") from exc

    def observe_live(self, version: int | None, error: float, confidence: float = math.nan) -> None:
        """Record the live outcome of one request served by ``version``.

        ``error`` is the request's error once its ground truth is known (e.g. 0/1
        misclassification, or absolute error), ``confidence`` the model's confidence.  Feeds
        the post-swap watch: after ``watch_requests`` observations of a freshly auto-swapped
        version, a mean error above the old version's by more than
        ``watch_regression_margin`` swaps the old version back and records the rollback in
        the registry's serving log. So does a mean confidence below the old version's by more
        than the threshold, unless the live error improved: the error is the ground truth, and a
        more accurate model that is less confident is better calibrated, not worse.

        Never raises: this runs on the request path, and a failure of the watch or its rollback
        is the background's problem (logged once, counted in :meth:`stats`).
        """
        try:
            if version is None or math.isnan(error):
                return
            rollback = self._observe(version, float(error), float(confidence))
            if rollback is not None:
                self._rollback(*rollback)
        except Exception as exc:
            self._background_failure("post-swap watch", exc)

    def _observe(self, version: int, error: float, confidence: float) -> tuple[_Watch, str] | None:
        """Record one observation; the watch to roll back and why, when it just failed."""
        n = max(self.config.watch_requests, 1)
        with self._live_lock:
            live = self._live.get(version)
            if live is None:
                live = self._live[version] = deque(maxlen=n)
            live.append((error, confidence))
            w = self._watch
            if w is None or version != w.new_version:
                return None
            w.errors.append(error)
            if not math.isnan(confidence):
                w.confidences.append(confidence)
            if len(w.errors) < self.config.watch_requests:
                return None
            self._watch = None
        err = sum(w.errors) / len(w.errors)
        conf = sum(w.confidences) / len(w.confidences) if w.confidences else math.nan
        thr = self.config.watch_regression_margin
        if err - w.baseline_error > thr:
            return w, f"live error {err:.4f} vs {w.baseline_error:.4f}"
        if not math.isnan(conf) and not math.isnan(w.baseline_confidence) \
                and err >= w.baseline_error and w.baseline_confidence - conf > thr:
            return w, f"live confidence {conf:.4f} vs {w.baseline_confidence:.4f}"
        log.info("version %d passed the post-swap watch (error %.4f vs %.4f)",
                 w.new_version, err, w.baseline_error)
        return None

    def _rollback(self, w: _Watch, why: str) -> None:
        """Serve the watched swap's old model again, unless something else swapped meanwhile.

        If the old version was removed from the registry since (by another process: cleanup
        keeps it) or its file was damaged, the weights that served as it, still in memory, are
        registered again under a new number, so the serving log names a version that exists
        and really serves.
        """
        with self._swap_lock:
            if self._slot.version != w.new_version:
                return  # something else swapped meanwhile
            target = w.old_version
            reason = f"rollback: watch regression of version {w.new_version}, {why}"
            try:
                self.registry.verify(target)
            except (VersionNotFoundError, ChecksumMismatchError) as exc:
                target = self.registry.register(w.old_model, {
                    "parent": w.old_version, "trigger": "rollback", "status": VersionStatus.CANDIDATE})
                reason += (f" (version {w.old_version} could not be used: {type(exc).__name__}; "
                           f"the weights that served as it restored as version {target})")
            if not self.registry.set_active(target, reason, verify=False, expect_active=w.new_version):
                return  # another process swapped meanwhile: its choice stands
            self._slot.swap(w.old_model, target, prepared=True)
            self._counts["rollbacks"] += 1
            self.changes.changed("training", f"rolled back to version {target}")
        log.warning("rolled back to version %d: %s", target, reason)
        try:
            self.registry.set_status(w.new_version, VersionStatus.REJECTED)
        except VersionNotFoundError:
            pass  # removed meanwhile: nothing left to mark

    def get_model_versions(self) -> list[dict[str, Any]]:
        """Registry metadata of every stored version, oldest first."""
        return self.registry.list_versions()

    def current_model_version(self) -> int | None:
        """Version of the model being served."""
        return self._slot.version

    def cleanup(self) -> list[int]:
        """Apply ``keep_last_n_versions`` / ``max_version_age_days``; return removed versions."""
        return self.registry.cleanup(self.config.keep_last_n_versions, self.config.max_version_age_days)

    def runs(self) -> list[TrainingRun]:
        """Recent runs (at most 200), oldest first."""
        return list(self._history)

    def _drop_leftovers(self) -> None:
        """Delete snapshots and candidates left by a process that died mid-run (keep its logs).

        A run directory is named after the process running it; one whose process is alive
        (this one included) is left alone.
        """
        runs = self.layout.runs
        if not os.path.isdir(runs):
            return
        for d in os.listdir(runs):
            owner = HomeLayout.run_owner(d)
            if owner is None or not pid_alive(owner):
                _drop_bulky(os.path.join(runs, d))

    def _load_history(self) -> None:
        path = self.layout.runs_file
        try:
            with open(path, "rb") as f:
                items = json.loads(f.read())
            for d in items:
                d["trigger"] = TrainingTrigger.parse(d["trigger"])
                d["status"] = RunStatus(d["status"])
                self._history.append(TrainingRun(**d))
            if self._history:
                self._next_run_id = self._history[-1].run_id + 1
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable run history %s: %s", path, exc)

    def stats(self) -> TrainingStats:
        """Counters and state."""
        with self._cond:
            pending = self._pending[0].value if self._pending else None
            in_run = self._in_run
        with self._live_lock:
            w = self._watch
            watching = None if w is None else {
                "new_version": w.new_version, "old_version": w.old_version,
                "observed": len(w.errors), "of": self.config.watch_requests,
                "baseline_error": w.baseline_error}
        c = self._counts
        return TrainingStats(
            running=self.is_running(), run_in_progress=in_run, pending_trigger=pending,
            runs_started=c["started"], runs_completed=c["completed"], runs_failed=c["failed"],
            runs_cancelled=c["cancelled"], runs_skipped=c["skipped"], samples_trained=c["samples"],
            current_version=self._slot.version, swaps=c["swaps"], rollbacks=c["rollbacks"],
            best_val_accuracy=self._best_acc, last_error=self._last_error,
            buffer_size=len(self._buffer), watching=watching,
            last_run=self._history[-1].to_dict() if self._history else None,
            background_errors=c["background_errors"],
            last_background_error=self._last_background_error)
