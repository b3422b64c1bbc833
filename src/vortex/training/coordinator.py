"""BackgroundTrainingCoordinator: background training composed from one-job parts.

A run goes: snapshot of the newest ``max_samples_per_batch`` buffered samples → Arrow IPC
file → ``world_size`` worker processes (:mod:`vortex.training.worker`, torch DDP) → candidate
safetensors + validation of candidate and active model on the same held-out samples (done by
the worker, off the serving process) → registry entry → swap if ``auto_swap_models`` and the
improvement exceeds ``min_improvement_threshold`` with a confidence interval above zero.

The parts: :mod:`~vortex.training.triggers` (when to train: the schedule, the sample
threshold, requests, coalesced into one pending run), :mod:`~vortex.training.launcher` (the
worker processes), :mod:`~vortex.training.runs` (the run record and ``runs.json``),
:mod:`~vortex.training.swapper` (registry, swaps, the model cache, the watch after a swap).
This module runs one run through them and owns the sample buffer and the lifecycle.

A swap made while a run trains (``vortex models swap`` from another process,
:meth:`~BackgroundTrainingCoordinator.swap_to_version`, a watch's rollback) is served within a
second, and it wins over the run: when the run concludes, its candidate is validated again
against the version serving *then* (a validation-only worker), and swapped in only if it beats
that version by the usual threshold.

While started, a housekeeping thread follows outside swaps and saves the sample buffer to
``<home>/buffer.arrow`` every ``buffer_persist_interval_secs``, so a killed serving process
loses at most that many seconds of samples. Nothing the background does (watch, rollback,
cleanup, persistence, following a swap) raises into a request: failures are logged once and
counted in :meth:`~BackgroundTrainingCoordinator.stats`.

Over 300 lines: a run's steps (execute, conclude, finish) read as one story here, and the
public methods other components call (the orchestrator, the CLI) stay in one class.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from .._fsspec import is_url
from .._io import remove_orphan_temps
from ..changes import ChangeBoard
from ..config import BackgroundTrainingConfig
from ..errors import ConfigError, ModelSwapError, RegistryError
from ..home import HomeLayout
from .launcher import WorkerLauncher, drop_bulky
from .models import build_model
from .multinode import run_on_nodes
from .registry import ModelRegistry
from .runs import RunHistory, TrainingRun
from .slot import ModelSlot
from .statuses import RunStatus
from .swapper import ModelSwapper
from .triggers import TrainingTrigger, TriggerQueue
from .worker import CANDIDATE_FILE, RESULT_FILE

__all__ = ["BackgroundTrainingCoordinator", "TrainingRun", "TrainingStats", "TrainingTrigger"]

log = logging.getLogger(__name__)

_SYNC_SECS = 1.0  # how often the housekeeping thread checks the registry for an outside swap


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
        on it, the post-swap watch runs on it, and any change ends that watch and restarts the
        live baseline. Default: one of its own.
    cleanup_interval_secs
        Period of the registry cleanup (:meth:`cleanup`) by the housekeeping thread while
        started; None: only after each run.
    registry
        The :class:`~vortex.training.registry.ModelRegistry` to write (e.g. one on shared
        storage, ``s3://...``); default: ``config.checkpoint_dir`` or ``<home>/models``. The
        training workers read it too (with its ``storage_options``).
    """

    def __init__(self, config: BackgroundTrainingConfig, model: Any, model_factory: str,
                 home: str | os.PathLike, feature_dim: int, label_dtype: str = "int64",
                 buffer: Any = None, factory_kwargs: dict[str, Any] | None = None,
                 changes: ChangeBoard | None = None,
                 cleanup_interval_secs: float | None = None, registry: ModelRegistry | None = None) -> None:
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
        self.cleanup_interval_secs = cleanup_interval_secs
        os.makedirs(self.home, exist_ok=True)
        remove_orphan_temps(self.home)  # of runs.json or buffer.arrow writes killed mid-way
        if registry is not None and config.checkpoint_dir is not None:
            raise ConfigError(f"BackgroundTrainingConfig.checkpoint_dir={config.checkpoint_dir!r}: "
                              f"must be None when the registry is given ({registry.root})")
        self.registry = registry if registry is not None else ModelRegistry(config.checkpoint_dir or self.layout.models)
        if config.distributed.run_url is not None and not is_url(self.registry.root):
            raise ConfigError(f"BackgroundTrainingConfig.distributed.run_url={config.distributed.run_url!r}: "
                              f"needs a registry on shared storage the other machines' ranks read, "
                              f"not the local {self.registry.root!r}")
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
        self.changes = changes if changes is not None else ChangeBoard()
        example = torch.zeros(1, feature_dim)  # warms up every model before it serves
        self._swapper = ModelSwapper(
            self.registry, ModelSlot(model, active, example=example), lambda: self.config,
            model_factory, self.factory_kwargs, example, self.changes, self._background_failure)
        self._swapper.remember(active, self.registry.get(active)["sha256"], model)

        self._cancel = threading.Event()
        self._triggers = TriggerQueue(lambda: self.config,
                                      lambda trig, reason: self._run(trig, reason, from_loop=True))
        self._launcher = WorkerLauncher(lambda: self.config, model_factory, self.factory_kwargs,
                                        self.registry.root, self._cancel, self.registry.storage_options)
        self._run_lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._history = RunHistory(self.layout.runs_file)
        WorkerLauncher.drop_leftovers(self.layout)
        self._counts = dict(started=0, completed=0, failed=0, cancelled=0, skipped=0,
                            samples=0, background_errors=0)
        self._best_acc: float | None = None
        self._last_error: str | None = None
        self._last_background_error: str | None = None
        self._background_errors_seen: set[str] = set()

    # ------------------------------------------------------------------ properties
    @property
    def slot(self) -> ModelSlot:
        """The :class:`ModelSlot` serving the active model."""
        return self._swapper.slot

    @property
    def buffer(self) -> Any:
        """The :class:`~vortex.training.SampleBuffer` runs train from."""
        return self._buffer

    # ------------------------------------------------------------------ samples
    def add_samples(self, features: Any, labels: Any, confidences: Any = None, errors: Any = None,
                    episodes: Any = None, timestamps: Any = None) -> int:
        """Append a batch of labelled samples; returns the first sequence number.

        ``timestamps`` (seconds since the epoch) default to now. Fires the SAMPLE_THRESHOLD
        trigger once ``min_samples_for_training`` new samples arrived since the last run's
        snapshot.
        """
        first = self._buffer.extend(features, labels, confidences=confidences, errors=errors,
                                    episodes=episodes, timestamps=timestamps)
        self._triggers.samples_arrived(self._buffer.next_seq)
        return first

    def add_sample(self, features: Any, label: Any, confidence: float = 1.0,
                   error: float = math.nan, episode: int = 0) -> int:
        """Append one labelled sample; returns its sequence number (see :meth:`add_samples`)."""
        seq = self._buffer.push(features, label, confidence=confidence, error=error, episode=episode)
        self._triggers.samples_arrived(seq + 1)
        return seq

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the background threads: training (scheduled and pending triggers) and
        housekeeping (following outside swaps, saving the buffer).
        """
        if not self._triggers.start():
            return  # running already
        self._keeper_stop.clear()
        self._keeper = threading.Thread(target=self._housekeeping, name="vortex-training-keeper",
                                        daemon=True)
        self._keeper.start()
        log.info("background training started (home %s)", self.home)

    def stop(self, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop the background threads; wait for a running run, or kill it if ``cancel``.

        A pending trigger stays pending (it runs after the next :meth:`start`). The buffer is
        saved a last time, so a clean stop loses no sample.
        """
        self._triggers.halt()
        self._keeper_stop.set()
        if cancel:
            self.cancel_run()
        self._triggers.join(timeout)
        if self._keeper is not None:
            self._keeper.join(timeout)
        self._keeper = None
        self._launcher.close()
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

    def persist_buffer_covering(self, timeout: float = 30.0) -> bool:
        """Save the buffer until the saved file holds every sample added so far; True once it
        does, False after ``timeout`` seconds.

        :meth:`persist_buffer` declines while another thread's save runs, which may have
        snapshotted the buffer before the newest samples: this waits for a save of its own, or
        one that covers them.
        """
        deadline = time.monotonic() + timeout
        while not self.persist_buffer() and self._persisted_seq != self._buffer.next_seq:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _housekeeping(self) -> None:
        """Follow outside swaps within a second, save the buffer and clean the registry up
        periodically, during runs too (runs happen on the training thread, not here).
        """
        persist, cleanup = self.config.buffer_persist_interval_secs, self.cleanup_interval_secs
        now = time.monotonic()
        next_persist = now + persist if persist else math.inf
        next_cleanup = now + cleanup if cleanup else math.inf
        while not self._keeper_stop.wait(
                max(0.0, min(_SYNC_SECS, next_persist - time.monotonic(),
                             next_cleanup - time.monotonic()))):
            self._swapper.sync_external()
            if time.monotonic() >= next_persist:
                self.persist_buffer()
                next_persist = time.monotonic() + persist
            if time.monotonic() >= next_cleanup:
                try:
                    self.cleanup()
                except Exception as exc:  # retried at the next period
                    self._background_failure("scheduled registry cleanup", exc)
                next_cleanup = time.monotonic() + cleanup  # type: ignore[operator]

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
        with self._triggers.cond:
            if not self._triggers.in_run:
                return False
            self._cancel.set()
        return True

    def worker_pids(self) -> list[int]:
        """Process ids of the current run's worker processes (empty when none is running)."""
        return self._launcher.pids()

    def is_running(self) -> bool:
        """True while the background thread is started."""
        return self._triggers.is_running()

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
        return self._triggers.request(TrainingTrigger.parse(trigger), reason)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no run is in progress or pending; False on timeout."""
        return self._triggers.wait_idle(timeout)

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
            triggers = self._triggers
            with triggers.cond:
                if from_loop and triggers.stopping:  # stop() came between picking the job and now
                    return TrainingRun(run_id=0, trigger=trig, reason=reason,
                                       status=RunStatus.CANCELLED, error="coordinator stopping")
                triggers.pending = None
                triggers.in_run = True  # from here on, cancel_run() reaches this run
                run = self._history.new_run(trig, reason)
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
        with self._triggers.cond:
            self._triggers.in_run = False
            self._cancel.clear()
            self._triggers.cond.notify_all()

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
        self._triggers.seq_at_last_run = self._buffer.next_seq
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
            if cfg.distributed.run_url is None:
                self._launcher.run(run_dir, snap_path, parent, cfg.world_size, run.run_id)
            else:
                run_on_nodes(self._launcher, cfg, run_dir, snap_path, parent, run.run_id)
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
                drop_bulky(run_dir)

    def _validate_against(self, run: TrainingRun, run_dir: str, snap_path: str,
                          version: int) -> dict[str, Any] | None:
        """The run's candidate compared with ``version`` on the same held-out rows, by a
        validation-only worker (the serving process does no model evaluation).
        """
        out = os.path.join(run_dir, f"against-v{version}")
        self._launcher.run(out, snap_path, version, 1, run.run_id,
                          candidate=os.path.join(run_dir, CANDIDATE_FILE))
        with open(os.path.join(out, RESULT_FILE), "rb") as f:
            return json.loads(f.read())["validation"]

    def _conclude(self, run: TrainingRun, run_dir: str, snap_path: str, parent: int | None) -> None:
        """Read the workers' result, then register the candidate and swap it in if it beats
        what serves *now* (:meth:`ModelSwapper.conclude`); clean the registry up.
        """
        with open(os.path.join(run_dir, RESULT_FILE), "rb") as f:
            result = json.loads(f.read())
        with open(os.path.join(run_dir, CANDIDATE_FILE), "rb") as f:
            candidate = f.read()
        run.ranks = result["rank_count"]
        run.train_samples = result["train_samples"]
        run.holdout_samples = result["holdout_samples"]
        run.train_loss = result["train_loss"]
        run.timings.update({f"worker_{k}": v for k, v in result["timings"].items()})
        run.validation = result["validation"]
        run.validated_against = parent
        self._swapper.conclude(run, candidate, result["epochs"], parent,
                               lambda version: self._validate_against(run, run_dir, snap_path, version),
                               self._cancel.is_set)
        try:
            self.cleanup()
        except Exception as exc:  # the run itself succeeded; a failed cleanup is retried next run
            self._background_failure("registry cleanup", exc)

    # ------------------------------------------------------------------ versions and swaps
    def swap_to_version(self, version: int, reason: str = "manual") -> None:
        """Serve ``version`` from the registry (roll back or forward).

        The weights are verified, loaded into a new model from the factory and warmed up
        before the swap; on any failure the current model keeps serving. A run in progress
        does not override this swap: its candidate must beat ``version`` to replace it.
        """
        try:
            self._swapper.swap(int(version), reason, watch=False)
        except (RegistryError, ModelSwapError):
            raise
        except Exception as exc:
            raise ModelSwapError(f"could not swap to version {version}: {exc}") from exc

    def observe_live(self, version: int | None, error: float, confidence: float = math.nan) -> None:
        """Record the live outcome of one request served by ``version`` on the change board.

        ``error`` is the request's error once its ground truth is known (e.g. 0/1
        misclassification, or absolute error), ``confidence`` the model's confidence. Feeds
        the post-swap watch (see :mod:`vortex.training.swapper`): after ``watch_requests``
        observations of a freshly auto-swapped version, a mean error above the old version's
        by more than ``watch_regression_margin`` swaps the old version back, and so does a mean
        confidence below the old version's by more than that, unless the live error improved.
        (An orchestrator feeds its board directly, once per request.)

        Never raises: this runs on the request path, and a failure of the watch or its rollback
        is the background's problem (logged once, counted in :meth:`stats`).
        """
        try:
            if version is None or math.isnan(error):
                return
            self.changes.observe(version, error=float(error), labelled_confidence=float(confidence))
        except Exception as exc:
            self._background_failure("post-swap watch", exc)

    def get_model_versions(self) -> list[dict[str, Any]]:
        """Registry metadata of every stored version, oldest first."""
        return self.registry.list_versions()

    def current_model_version(self) -> int | None:
        """Version of the model being served."""
        return self.slot.version

    def cleanup(self) -> list[int]:
        """Apply ``keep_last_n_versions`` / ``max_version_age_days``; return removed versions."""
        return self.registry.cleanup(self.config.keep_last_n_versions, self.config.max_version_age_days)

    def runs(self) -> list[TrainingRun]:
        """Recent runs (at most 200), oldest first."""
        return self._history.runs()

    def stats(self) -> TrainingStats:
        """Counters and state."""
        with self._triggers.cond:
            pending = self._triggers.pending[0].value if self._triggers.pending else None
            in_run = self._triggers.in_run
        c = self._counts
        last = self._history.last()
        return TrainingStats(
            running=self.is_running(), run_in_progress=in_run, pending_trigger=pending,
            runs_started=c["started"], runs_completed=c["completed"], runs_failed=c["failed"],
            runs_cancelled=c["cancelled"], runs_skipped=c["skipped"], samples_trained=c["samples"],
            current_version=self.slot.version, swaps=self._swapper.swaps,
            rollbacks=self._swapper.rollbacks, best_val_accuracy=self._best_acc,
            last_error=self._last_error, buffer_size=len(self._buffer),
            watching=self._swapper.watching(),
            last_run=last.to_dict() if last is not None else None,
            background_errors=c["background_errors"],
            last_background_error=self._last_background_error)
