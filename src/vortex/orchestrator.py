"""The orchestrator: one object that serves a model and wires detection, RSI and training.

::

    orch = (vortex.Orchestrator(model=net, model_factory="pkg.models:make", home=".vortex",
                                feature_dim=64)
            .with_runtime_detector(vortex.RuntimeDetectorConfig(monitor_interval_ms=1000))
            .with_self_modification("service/")
            .with_background_trainer(vortex.BackgroundTrainingConfig(min_samples_for_training=500)))
    orch.enable_rsi(vortex.RSIConfig(enabled=True))
    orch.start_runtime_monitoring()
    orch.start_background_training()
    pred = orch.infer(x, mode="fast")
    orch.feedback(pred.request_id, label)

The request path (:meth:`Orchestrator.infer`, :meth:`Orchestrator.feedback`) only reads the
model slot, calls the model and records into the compiled metric window, tracker and sample
ring. Everything slow (analysis, sandboxed tests, training) runs on background threads and
processes, and is wired here through callbacks:

* detector trigger -> RSI engine cycle (handed to the engine's scheduler, which runs it on its
  trigger thread, not the monitor's),
* applied proposal -> training run with ``TrainingTrigger.RSI_TRIGGERED`` and its reason,
* answered request and feedback -> the change board (:mod:`vortex.changes`): the one signal
  path to the watch after an apply or a swap, observed once per event,
* feedback -> error metric, training sample, flux-position outcome.

Over 300 lines: the request path's general cases (feature validation, the softmax fallback,
the feedback's checks) are the compiled path's other half and stay beside its wiring. The
reporting and pass-throughs live in :mod:`vortex.facade`, the pending table in
:mod:`vortex.pending`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import reprlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from . import degraded
from ._fast_serving import RequestPath
from ._scalars import INT64_MAX, INT64_MIN, as_class_label, as_index, as_real
from .changes import NLL_CAP, ChangeBoard
from .config import MAX_WAIT_SECS, BackgroundTrainingConfig, RSIConfig, RuntimeDetectorConfig
from .errors import ConfigError, VortexError
from .facade import ComponentAccess, SystemStatus
from .pending import PendingTable

__all__ = ["Orchestrator", "Prediction", "SystemStatus"]

log = logging.getLogger(__name__)

MAX_FEATURE_DIM = 1 << 20
"""Largest ``feature_dim`` (the sample ring's limit)."""

ModeFn = Callable[[Any, Any], Any]
"""A serving mode: ``fn(model, x_batch) -> logits (classification) or values (regression)``."""


def _fast(model: Any, x: Any) -> Any:
    return model(x)


@dataclass(frozen=True)
class Prediction:
    """The answer to one :meth:`Orchestrator.infer` call.

    Attributes
    ----------
    request_id
        Pass it to :meth:`Orchestrator.feedback` when the ground truth arrives.
    output
        Predicted class (classification) or value (regression).
    confidence
        Max softmax probability (classification); 1.0 for regression.
    probabilities
        Class probabilities (classification) as a tuple, else None.
    mode
        The serving mode that answered.
    model_version
        Registry version of the model that answered (None before the first registration).
    latency_ms
        Wall time of the model call and its bookkeeping.
    """

    request_id: int
    output: Any
    confidence: float
    probabilities: tuple[float, ...] | None
    mode: str
    model_version: int | None
    latency_ms: float


_PREDICTION_FIELDS = tuple(f.name for f in fields(Prediction))


def _softmax_top_numpy(raw: Any) -> tuple[int, float, tuple[float, ...]]:
    """``(class, confidence, probabilities)`` of any logits NumPy can read (the general path
    behind ``_fast_serving.softmax_top``).
    """
    import numpy as np

    out = np.asarray(raw, dtype=np.float64).reshape(-1)  # a tensor or an array
    shifted = np.exp(out - out.max())
    probs = shifted / shifted.sum()
    cls = int(probs.argmax())
    return cls, float(probs[cls]), tuple(probs.tolist())


def _record_degraded(home: Path, *_: Any) -> None:
    try:
        degraded.write_record(home)
    except OSError as exc:  # the fallback itself is logged and in system_status() regardless
        log.warning("could not record the fallbacks in %s: %s", home, exc)


def _check_arguments(model: Any, home: Any, model_factory: Any, feature_dim: Any, modes: Any, task: Any,
                     factory_kwargs: Any, pending_capacity: Any, pending_ttl_secs: Any,
                     cleanup_interval_secs: Any) -> None:
    """ConfigError naming the first bad :class:`Orchestrator` argument (nothing is created)."""

    def fail(name: str, value: Any, why: str) -> None:
        raise ConfigError(f"Orchestrator.{name}={value!r}: {why}")

    def integer(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def seconds(name: str, value: Any, hi: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= hi:
            fail(name, value, f"must be a number of seconds in (0, {hi:g}]")

    if not (callable(model) and callable(getattr(model, "eval", None))):
        fail("model", model, "must be a torch.nn.Module (callable, with eval())")
    if not isinstance(home, (str, os.PathLike)) or not isinstance(os.fspath(home), str) \
            or not os.fspath(home):
        fail("home", home, "must be a directory path (str or os.PathLike)")
    if model_factory is not None and (not isinstance(model_factory, str)
                                      or ":" not in model_factory):
        fail("model_factory", model_factory, "must be 'package.module:function' or None")
    if not integer(feature_dim) or not 1 <= feature_dim <= MAX_FEATURE_DIM:
        fail("feature_dim", feature_dim, f"must be an integer in 1..{MAX_FEATURE_DIM}")
    if task not in ("classification", "regression"):
        fail("task", task, "must be 'classification' or 'regression'")
    if modes is not None:
        if not isinstance(modes, Mapping):
            fail("modes", modes, "must be a mapping of mode names to callables")
        for name, fn in modes.items():
            if not isinstance(name, str) or not name:
                fail("modes", name, "mode names must be non-empty strings")
            if not callable(fn):
                fail(f"modes[{name!r}]", fn, "must be callable")
    if factory_kwargs is not None:
        if not isinstance(factory_kwargs, Mapping) or not all(isinstance(k, str) for k in factory_kwargs):
            fail("factory_kwargs", factory_kwargs, "must be a mapping with string keys")
        try:  # the training workers receive them as JSON
            json.dumps(dict(factory_kwargs), allow_nan=False)
        except (TypeError, ValueError) as exc:
            fail("factory_kwargs", factory_kwargs, f"must be JSON-serialisable ({exc})")
    if not integer(pending_capacity) or pending_capacity < 1:
        fail("pending_capacity", pending_capacity, "must be an integer >= 1")
    seconds("pending_ttl_secs", pending_ttl_secs, math.inf)
    seconds("cleanup_interval_secs", cleanup_interval_secs, MAX_WAIT_SECS)


class Orchestrator(ComponentAccess):
    """Serve a model while Vortex watches, patches and retrains it.

    Parameters
    ----------
    model
        The initial ``torch.nn.Module``; it serves until a better version is swapped in.
    model_factory
        ``"package.module:function"`` that builds an untrained module of the same architecture;
        the training worker processes import it.
    home
        Directory for everything that survives a restart: model registry, proposals, audit
        log, buffered samples.
    feature_dim
        Length of one input vector.
    modes
        Named serving modes, each ``fn(model, x_batch) -> output``; ``"fast"`` (the plain model
        call) is always present unless overridden.
    task
        ``"classification"`` or ``"regression"``.
    factory_kwargs
        Keyword arguments for ``model_factory``.
    pending_capacity, pending_ttl_secs
        Bounds of the table of requests awaiting feedback.
    cleanup_interval_secs
        Period of the registry cleanup (``keep_last_n_versions``, ``max_version_age_days``)
        once background training is started; daily by default.
    registry
        The :class:`~vortex.training.registry.ModelRegistry` background training writes
        (one on shared storage, for replicas on several machines); default: the home's
        ``models`` directory (or ``BackgroundTrainingConfig.checkpoint_dir``).
    """

    def __init__(self, model: Any, model_factory: str | None = None, home: str | os.PathLike = ".vortex",
                 *, feature_dim: int, modes: Mapping[str, ModeFn] | None = None,
                 task: str = "classification", factory_kwargs: Mapping[str, Any] | None = None,
                 pending_capacity: int = 100_000, pending_ttl_secs: float = 3600.0,
                 cleanup_interval_secs: float = 24 * 3600.0, registry: Any = None) -> None:
        _check_arguments(model, home, model_factory, feature_dim, modes, task, factory_kwargs,
                         pending_capacity, pending_ttl_secs, cleanup_interval_secs)
        self.cleanup_interval_secs = cleanup_interval_secs
        self._registry = registry
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.feature_dim = feature_dim
        self.task = task
        self.model_factory = model_factory
        self.factory_kwargs = dict(factory_kwargs or {})
        self._modes: dict[str, ModeFn] = {"fast": _fast, **(modes or {})}
        self._pending = PendingTable(pending_capacity, pending_ttl_secs)

        from .monitor import PerformanceTracker

        # request ids are 1, 2, 3, ...: the tracker counts each request at its flux position
        # from that numbering, at no cost per request (outcomes use the request id too)
        self.tracker = PerformanceTracker(arrival_positions=True)
        # patches and swaps are announced here: one post-change watch at a time (see
        # vortex.changes), audited in the RSI audit log once an engine is attached
        self.changes = ChangeBoard()
        self.detector: Any = None
        self.rsi: Any = None
        self.trainer: Any = None
        self._rsi_target: Path | None = None
        self._rsi_config = RSIConfig()
        self._slot = self._own_slot(model)
        import torch  # already loaded by the model slot

        self._classification = task == "classification"
        # torch.inference_mode() enters exactly this guard, through two Python-level calls
        # that cost ~1 us per request; use it directly where this torch has it.
        guard = getattr(torch._C, "_InferenceMode", None)
        self._tensor_type = torch.Tensor
        self._float32 = torch.float32
        self._path = RequestPath(
            self, self._pending, Prediction, _PREDICTION_FIELDS, self._modes, feature_dim,
            self._classification, functools.partial(guard, True) if guard is not None
            else torch.inference_mode, torch.from_numpy, torch.Tensor, torch.float32,
            torch.strided, time.perf_counter)
        self._closed = False
        # this process's fallbacks, recorded under the home for `vortex status` (now, which
        # replaces an earlier process's record, and on each new one)
        self._record_degraded = functools.partial(_record_degraded, self.home)
        degraded.subscribe(self._record_degraded)
        _record_degraded(self.home)
        self._wire()

    def _wire(self) -> None:
        """Point the request path at the current components (after each is attached)."""
        self._path.wire(self._slot, self.detector, self.tracker, self.changes)

    # ------------------------------------------------------------------ wiring
    @staticmethod
    def _own_slot(model: Any) -> Any:
        from .training.slot import ModelSlot

        return ModelSlot(model, None)

    def with_runtime_detector(self, config: RuntimeDetectorConfig | None = None) -> Orchestrator:
        """Attach the runtime detector (its weaknesses trigger RSI cycles when RSI is enabled)."""
        from .monitor import RuntimeDetector

        self.detector = RuntimeDetector(config or RuntimeDetectorConfig())
        self.detector.subscribe(self._on_trigger)
        self._wire()
        return self

    def with_self_modification(self, target: str | os.PathLike, config: RSIConfig | None = None,
                               **engine_kwargs: Any) -> Orchestrator:
        """Attach the RSI engine to a source tree with ``[tool.vortex]`` settings."""
        from .rsi import RSIEngine

        self._rsi_target = Path(target)
        if config is not None:
            self._rsi_config = config
        self.rsi = RSIEngine(self._rsi_target, home=self.home, config=self._rsi_config,
                             weakness_source=self.current_weaknesses,
                             calibration_data=self._calibration_data,
                             on_applied=self._on_proposal_applied, changes=self.changes,
                             **engine_kwargs)
        self.changes.audit = self.rsi.audit.append  # swaps' ended watches too, in the home's trail
        self._wire()
        return self

    def with_background_trainer(self, config: BackgroundTrainingConfig | None = None) -> Orchestrator:
        """Attach background training; the samples a previous run saved in
        ``<home>/buffer.arrow`` are reloaded (by the coordinator).
        """
        from .training import BackgroundTrainingCoordinator

        if self.model_factory is None:
            raise ConfigError("Orchestrator.model_factory=None: background training needs "
                              "'package.module:function' that builds the model")
        config = config or BackgroundTrainingConfig(task=self.task)
        label_dtype = "int64" if self.task == "classification" else "float32"
        _, model = self._slot.get()
        self.trainer = BackgroundTrainingCoordinator(
            config, model=model, model_factory=self.model_factory, home=self.home,
            feature_dim=self.feature_dim, label_dtype=label_dtype,
            factory_kwargs=self.factory_kwargs, changes=self.changes,
            cleanup_interval_secs=self.cleanup_interval_secs, registry=self._registry)
        self._slot = self.trainer.slot
        self._wire()
        return self

    def enable_rsi(self, config: RSIConfig) -> Orchestrator:
        """Set the RSI configuration (``enabled=True`` lets triggers and schedules run cycles)."""
        if not isinstance(config, RSIConfig):
            raise ConfigError(f"Orchestrator.enable_rsi(config={config!r}): must be an RSIConfig")
        self._rsi_config = config
        if self.rsi is not None:
            self.rsi.update_config(config)
        return self

    # ------------------------------------------------------------------ lifecycle
    def start_runtime_monitoring(self) -> None:
        """Start the detector's monitor thread, and the RSI engine's scheduled cycles when RSI
        is enabled.
        """
        if self.detector is None:
            raise VortexError("no runtime detector: call with_runtime_detector() first")
        self.detector.start()
        if self.rsi is not None and self._rsi_config.enabled:
            self.rsi.start()

    def stop_runtime_monitoring(self) -> None:
        """Stop the detector's monitor thread (a no-op without a detector).

        Only its passes stop (so nothing triggers): the request path keeps feeding it
        samples, and the RSI engine's scheduled cycles keep running until :meth:`close`.
        """
        if self.detector is not None:
            self.detector.stop()

    def start_background_training(self) -> None:
        """Start the trainer's threads: scheduled and triggered training runs, and the
        housekeeping that follows outside swaps, saves the buffer and cleans the registry.

        Raises
        ------
        vortex.errors.VortexError
            No trainer is attached (call :meth:`with_background_trainer` first).
        """
        if self.trainer is None:
            raise VortexError("no background trainer: call with_background_trainer() first")
        self.trainer.start()  # its housekeeping thread runs the scheduled registry cleanup

    def close(self) -> None:
        """Stop every thread and process and save the buffered samples. Idempotent."""
        if self._closed:
            return
        self._closed = True
        degraded.unsubscribe(self._record_degraded)
        if self.detector is not None:
            self.detector.stop()
        if self.rsi is not None:
            self.rsi.stop(timeout=120)  # waits for a triggered cycle
        if self.trainer is not None:
            self.trainer.stop(cancel=True)  # saves the buffer a last time

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ request path
    def infer(self, x: Any, mode: str = "fast") -> Prediction:
        """Run the active model on one input vector and record latency and confidence.

        Parameters
        ----------
        x
            One input of ``feature_dim`` real numbers (NumPy array, sequence or torch tensor;
            bool, integer or float). A contiguous float32 NumPy array is used without a copy,
            and is kept by reference until the request's feedback: do not modify it meanwhile.
            NaN and infinite features are refused, although a model that imputes could take
            them: the features become a training sample, and one NaN makes a training run's
            loss NaN. Impute before calling ``infer``.
        mode
            Name of a serving mode.

        Raises
        ------
        ValueError
            ``x`` has the wrong length, a non-real dtype (complex, string, object) or a
            non-finite value, or ``mode`` is unknown; nothing is recorded.
        """
        return self._path.infer(x, mode)

    # the general cases of the request path (see _fast_serving.RequestPath)
    def _unknown_mode(self, mode: Any) -> ValueError:
        return ValueError(f"mode={mode!r} is not a serving mode; known: {sorted(self._modes)}")

    _softmax_general = staticmethod(_softmax_top_numpy)

    @staticmethod
    def _regression_output(raw: Any) -> float:
        import numpy as np

        return float(np.asarray(raw, dtype=np.float64).reshape(-1)[0])

    def _features(self, x: Any) -> Any:
        """``x`` as a validated 1-D float32 array (the general path of :meth:`infer`)."""
        import numpy as np

        values = x
        if isinstance(values, self._tensor_type):
            if values.is_complex():
                raise ValueError(f"x has dtype {values.dtype}: features must be real numbers")
            values = values.detach().to("cpu", self._float32).numpy()
        try:
            values = np.asarray(values)
        except (TypeError, ValueError) as exc:  # ragged nesting, say
            raise ValueError(f"x={reprlib.repr(x)} cannot be read as an array ({exc})") from None
        if values.dtype.kind not in "biuf":
            raise ValueError(f"x={reprlib.repr(x)} has dtype {values.dtype}: features must be "
                             "real numbers (bool, integer or float)")
        values = values.reshape(-1)
        if values.shape[0] != self.feature_dim:
            raise ValueError(f"x has {values.shape[0]} features; this model takes {self.feature_dim}")
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused below
            features = np.ascontiguousarray(values, dtype=np.float32)
        finite = np.isfinite(features)
        if not finite.all():
            i = int(np.argmin(finite))
            raise ValueError(f"x[{i}]={values[i].item()!r}: features must be finite in float32 "
                             "(no NaN or inf; impute missing values before infer)")
        return features

    def feedback(self, request_id: int, label: Any, *, episode: int = 0) -> float:
        """Report the ground truth of an earlier request; returns its prediction error.

        The error (``1 - p(label)`` for classification, ``min(1, |y - label|)`` for
        regression) feeds the detector, the sample becomes training data and its flux
        position's outcome feeds the tracker.

        Parameters
        ----------
        request_id
            :attr:`Prediction.request_id` of the request.
        label
            Classification: the class index (an integer of any kind, or an integral float such
            as ``2.0``; never a fraction, a bool or a string). Regression: a finite number.
        episode
            Episode id of the sample (the backward flux chain runs within an episode).

        Raises
        ------
        UnknownRequestError
            The id is unknown, answered already, evicted or expired.
        ValueError
            A bad ``label``, ``episode`` or ``request_id``, naming the value. Nothing is
            recorded and the request stays pending: a corrected feedback can follow.
        """
        pending = self._pending
        # Check every argument before the request is consumed: a refused feedback leaves the
        # request answerable by a corrected one.
        if type(request_id) is not int:
            request_id = as_index(request_id, "request_id")
        detector_id, features, probs, output, confidence, _, version, _ = pending.peek(request_id)
        nll = None
        if self._classification:
            if type(label) is not int or not 0 <= label < len(probs):
                label = as_class_label(label, len(probs))
            error = 1.0 - probs[label]
            correct = output == label
        else:
            label = as_real(label, "label", "must be a finite number")
            if not math.isfinite(label):
                raise ValueError(f"label={label!r}: must be a finite number")
            error = min(1.0, abs(output - label))
            correct = error < 0.5
        if type(episode) is not int or not INT64_MIN <= episode <= INT64_MAX:
            episode = as_index(episode, "episode")
        pending.pop(request_id)  # the one consuming step: a concurrent duplicate fails here
        if detector_id is not None:
            self.detector.record_error(detector_id, error)
        trainer = self.trainer
        if trainer is not None:
            trainer.add_sample(features, label, confidence=confidence, error=error, episode=episode)
        self.tracker.record_outcome(request_id, correct)
        changes = self.changes
        if changes.needs_observations:
            if self._classification:  # the watch of a calibration judges the NLL it was tested on
                nll = -math.log(probs[label]) if probs[label] > 0.0 else NLL_CAP
            changes.labelled(version, error, 0.0 if correct else 1.0, nll, confidence)
        return error

    # ------------------------------------------------------------------ RSI wiring
    def _on_trigger(self, event: Any) -> None:
        # Called on the detector's monitor thread: the engine's scheduler queues the event and
        # returns at once (the one hand-off; see vortex.rsi.scheduler).
        rsi = self.rsi
        if rsi is not None:
            rsi.on_trigger(event)

    def _on_proposal_applied(self, proposal: Any) -> None:
        if self.trainer is not None:
            from .training import TrainingTrigger

            self.trainer.trigger_training(TrainingTrigger.RSI_TRIGGERED,
                                          reason=f"proposal {proposal.id}: {proposal.description}")

    def current_weaknesses(self) -> tuple[int, list[Any]]:
        """Requests served and the weaknesses the runtime detector's rules see now
        (:meth:`~vortex.monitor.RuntimeDetector.assess`; none without a detector): what a
        scheduled RSI cycle acts on, by the same thresholds as the detector's triggers.
        """
        found = self.detector.assess() if self.detector is not None else []
        return self.tracker.total_inferences, found

    def _calibration_data(self) -> tuple[Any, Any] | None:
        """Logits and labels of buffered samples, for temperature fitting (classification)."""
        if self.trainer is None or self.task != "classification":
            return None
        import numpy as np
        import torch

        snap = self.trainer.buffer.snapshot(max_rows=2000)
        if len(snap) == 0:
            return None
        _, model = self._slot.get()
        with torch.inference_mode():
            logits = model(torch.from_numpy(snap.features)).numpy()
        return logits.astype(np.float64), snap.labels.astype(np.int64)

