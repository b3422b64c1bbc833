"""Registering, swapping and caching model versions, and the watch after an automatic swap.

:class:`ModelSwapper` owns the served :class:`~vortex.training.slot.ModelSlot`: every swap
(a run's candidate, a person's ``swap_to_version``, the registry's active version changed by
another process, a watch's rollback) goes through it, under one lock, verified against the
registry's sha256 and warmed up before it serves; the last ``model_cache_size`` prepared
models are kept so a rollback to a recent version is a reference swap.

After an automatic swap the new version is watched on the shared
:class:`~vortex.changes.ChangeBoard` (a :class:`~vortex.watch.RegressionWatch` on the live
error of requests it served, with their confidence as a guard): if its live error is worse
than the old version's by more than ``watch_regression_margin`` (or, with no better error,
its mean confidence lower by more than that), the old version serves again and the rollback
is recorded in the serving log.

A candidate is activated with a compare-and-swap on the version it was validated against, so
a swap made meanwhile (which wins over the run) is never overridden.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..changes import ChangeBoard
from ..errors import ChecksumMismatchError, ModelSwapError, VersionNotFoundError
from ..watch import RegressionWatch, Verdict
from .models import build_model
from .registry import ModelRegistry
from .slot import ModelSlot, prepare_model
from .statuses import RunStatus, VersionStatus
from .validation import ValidationResult, should_swap

__all__ = ["ModelSwapper"]

log = logging.getLogger(__name__)

_MAX_REVALIDATIONS = 3  # swaps during one run's conclusion after which it gives up swapping


@dataclass(frozen=True)
class _Swapped:
    """What the watch of a swap rolls back to: the old version and the model that served it."""

    new_version: int
    old_version: int
    old_model: Any


class ModelSwapper:
    """Serves model versions from ``registry`` through ``slot`` (see the module docstring).

    Parameters
    ----------
    registry, slot
        The registry and the slot serving its active version.
    config
        Returns the current :class:`~vortex.config.BackgroundTrainingConfig`
        (``model_cache_size``, ``watch_requests``, ``watch_regression_margin``,
        ``min_improvement_threshold``, ``auto_swap_models``, ``enable_versioning``).
    model_factory, factory_kwargs, example
        How to build a model for a version, and the input that warms it up.
    changes
        The board every swap is announced on and the watch runs on.
    failed
        ``failed(what, exc)`` records a failure of background work (never raised).
    """

    def __init__(self, registry: ModelRegistry, slot: ModelSlot, config: Callable[[], Any],
                 model_factory: str, factory_kwargs: dict[str, Any], example: Any,
                 changes: ChangeBoard, failed: Callable[[str, BaseException], None]) -> None:
        self.registry = registry
        self.slot = slot
        self._config = config
        self.model_factory = model_factory
        self.factory_kwargs = factory_kwargs
        self._example = example
        self.changes = changes
        self._failed = failed
        self.lock = threading.RLock()
        self._models: OrderedDict[int, tuple[str, Any]] = OrderedDict()
        self.swaps = 0
        self.rollbacks = 0
        # a swap is judged by the live error, guarded by the same requests' confidence
        changes.keep(config().watch_requests, ("error", "labelled_confidence"))

    # ------------------------------------------------------------------ the model cache
    def load_prepared(self, version: int) -> Any:
        """A model with ``version``'s verified weights, eval'd and warmed up (from the cache
        when its sha256 matches).
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
        self.remember(version, sha, model)
        return model

    def remember(self, version: int | None, sha: str, model: Any) -> None:
        """Cache a prepared model of ``version`` (the least recently used leaves first)."""
        size = self._config().model_cache_size
        if version is None or size == 0:
            return
        self._models[version] = (sha, model)
        self._models.move_to_end(version)
        while len(self._models) > size:
            self._models.popitem(last=False)

    # ------------------------------------------------------------------ a run's candidate
    def decide(self, validation: dict[str, Any] | None) -> tuple[bool, str]:
        """Whether a candidate with this validation is better enough to serve, and why."""
        threshold = self._config().min_improvement_threshold
        if validation is None:
            return False, "no held-out samples to validate on"
        vr = ValidationResult(**validation)
        return should_swap(vr, threshold), (
            f"improvement {vr.improvement_pct:+.2f}% [{vr.ci_low:+.2f}, {vr.ci_high:+.2f}] at "
            f"{vr.confidence_level:.0%} vs threshold {threshold}%")

    def conclude(self, run: Any, candidate: bytes, epochs: int, parent: int | None,
                 revalidate: Callable[[int], dict[str, Any] | None],
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        """Register ``run``'s candidate (safetensors bytes) and swap it in if it beats what
        serves *now*; sets ``run``'s status, version and validation.

        A swap made during the run (by a person, the API or a rollback) wins over the run: the
        candidate is validated again against the version serving at this point
        (``revalidate(version)``: a validation-only worker), and activated with a
        compare-and-swap on that version, so a swap made meanwhile is not overridden.

        Before it swaps, it waits up to ``swap_waits_for_watch_secs`` while the watch of another
        component's change (an applied patch) runs, so that change is judged on its own
        (``cancelled()`` ends the wait early).
        """
        cfg = self._config()
        self.sync_external()  # serve what the registry says before comparing with it
        for _ in range(_MAX_REVALIDATIONS + 1):
            serving = self.registry.active_version
            if serving != run.validated_against and run.validation is not None and serving is not None:
                log.info("run %d: version %s was made active during the run; validating the "
                         "candidate against it", run.run_id, serving)
                run.validation = revalidate(serving)
                run.validated_against = serving
            better, why = self.decide(run.validation)
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
                    "epochs": epochs, "train_loss": run.train_loss,
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
            if not self.changes.wait_for_other_watch("training", cfg.swap_waits_for_watch_secs, cancelled):
                log.info("run %d: the watch of another change still runs after %s s: swapping, "
                         "which ends it unjudged", run.run_id, cfg.swap_waits_for_watch_secs)
            if self.swap(run.version, reason, watch=True, expect_active=run.validated_against):
                run.status, run.swapped = RunStatus.SWAPPED, True
                break
            self.sync_external()  # another swap came first: judge again against that one
        else:
            run.status = RunStatus.REGISTERED
            why += f"; not swapped: the active version changed {_MAX_REVALIDATIONS + 1} times meanwhile"
        log.info("run %d: version %s %s (%s)", run.run_id, run.version, run.status, why)

    # ------------------------------------------------------------------ swaps
    def swap(self, version: int, reason: str, watch: bool, expect_active: Any = ...) -> bool:
        """Serve ``version`` and record it; False if ``expect_active`` (see
        :meth:`ModelRegistry.set_active`) no longer serves (nothing changed then). With
        ``watch``, the new version is watched against the old one's live figures.
        """
        with self.lock:
            model = self.load_prepared(version)
            old_version = self.slot.version
            if not self.registry.set_active(version, reason, verify=False,  # load_prepared verified
                                            expect_active=expect_active):
                return False
            old = self.slot.swap(model, version, prepared=True)
            self.swaps += 1
            w = self._watch(version, old_version, old.model) if watch else None
            self.changes.changed("training", f"version {version} swapped in ({reason})", watch=w)
        return True

    def _watch(self, version: int, old_version: int | None, old_model: Any) -> RegressionWatch | None:
        """The watch of a swap from ``old_version``, its baseline what that version served
        since the last change; None when there is nothing to compare with.
        """
        cfg = self._config()
        n = cfg.watch_requests
        if n <= 0:
            return None
        errors = [] if old_version is None else self.changes.recent("error", n, version=old_version)
        if old_version is None or not errors:
            log.info("no live observations of version %s since the last change: post-swap "
                     "watch skipped", old_version)
            return None
        confidences = self.changes.recent("labelled_confidence", n, version=old_version)
        swapped = _Swapped(version, old_version, old_model)
        return RegressionWatch(
            f"post-swap watch of model version {version}", "error", True, n,
            cfg.watch_regression_margin, sum(errors) / len(errors),
            on_regress=functools.partial(self._regressed, swapped), relative=False,
            version=version, owner=self, subject=swapped,
            guard=("labelled_confidence", False,
                   sum(confidences) / len(confidences) if confidences else math.nan))

    def watching(self) -> dict[str, Any] | None:
        """The running post-swap watch, for ``stats()``."""
        w = self.changes.watching()
        if w is None or w.owner is not self:
            return None
        return {"new_version": w.subject.new_version, "old_version": w.subject.old_version,
                "observed": len(w.values), "of": w.samples, "baseline_error": w.baseline}

    def _regressed(self, swapped: _Swapped, verdict: Verdict) -> None:
        """The watch's verdict (on the request path): roll back; failures are recorded."""
        try:
            figure = verdict.metric.removeprefix("labelled_")  # "error" or "confidence"
            self.rollback(swapped, f"live {figure} {verdict.after:.4f} vs {verdict.baseline:.4f}")
        except Exception as exc:
            self._failed("post-swap watch", exc)

    def rollback(self, w: _Swapped, why: str) -> None:
        """Serve the watched swap's old model again, unless something else swapped meanwhile.

        If the old version was removed from the registry since (by another process: cleanup
        keeps it) or its file was damaged, the weights that served as it, still in memory, are
        registered again under a new number, so the serving log names a version that exists
        and really serves.
        """
        with self.lock:
            if self.slot.version != w.new_version:
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
            self.slot.swap(w.old_model, target, prepared=True)
            self.rollbacks += 1
            self.changes.changed("training", f"rolled back to version {target}")
        log.warning("rolled back to version %d: %s", target, reason)
        try:
            self.registry.set_status(w.new_version, VersionStatus.REJECTED)
        except VersionNotFoundError:
            pass  # removed meanwhile: nothing left to mark

    def sync_external(self) -> None:
        """Serve the registry's active version if another process (``vortex models swap``)
        changed it. Never raises: a failure is logged once and counted.
        """
        try:
            if self.registry.active_version in (None, self.slot.version):
                return
            with self.lock:
                active = self.registry.active_version
                if active is None or active == self.slot.version:
                    return
                self.slot.swap(self.load_prepared(active), active, prepared=True)
                self.changes.changed("training", f"version {active} made active outside this process")
            log.info("serving version %d, made active outside this process", active)
        except Exception as exc:
            self._failed("following the registry's active version", exc)
