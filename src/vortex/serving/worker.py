"""The serving worker: :class:`ServingWorker` serves and records, nothing else.

It answers from its :class:`~vortex.training.ModelSlot` (through the request path of a bare
:class:`vortex.Orchestrator`: no detector, trainer or RSI engine attached), records each
request into its own shared-memory segment (:class:`vortex.shm.WorkerSegment`) and keeps what
the request's feedback needs in its pending ring (:mod:`vortex.serving.pending`). A
background thread follows the registry's active version (written by the control plane) and
the tunables file follows itself on read. Nothing on its request path trains, runs RSI or
writes the registry.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from contextvars import ContextVar
from typing import Any

from .._fast_asgi import RequestContext, mint_request_id
from .._fast_asgi import current_request as _current_request
from .._scalars import INT64_MAX, INT64_MIN, as_class_label, as_index, as_real
from ..changes import NLL_CAP
from ..home import HomeLayout
from .pending import PendingFinder, PendingRing
from .spec import ServiceSpec

__all__ = ["MAX_REQUEST_ID", "RequestContext", "ServingWorker", "current_request", "mint_request_id"]

log = logging.getLogger(__name__)

REFUSED_RETRY_SECS = 30.0
"""A version a worker refused (damaged weights...) is tried again after this long, or as soon
as it becomes active again after another version was."""


# The request's context (set by the ASGI middleware, read by infer) and request ids: compiled,
# since every HTTP request makes one of each (vortex._fast_asgi).
current_request: ContextVar[RequestContext | None] = _current_request
"""The :class:`RequestContext` of the HTTP request being served (None outside one)."""

MAX_REQUEST_ID = 200
"""Longest request id accepted (characters)."""


def check_request_id(request_id: Any) -> str:
    """``request_id`` if it is a usable id; ValueError naming it otherwise."""
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID \
            or not request_id.isprintable():
        raise ValueError(f"request_id={request_id!r}: must be a printable string of 1.."
                         f"{MAX_REQUEST_ID} characters")
    return request_id


class ServingWorker:
    """One serving process of a :class:`~vortex.serving.ServiceSpec` (create it after the fork).

    Parameters
    ----------
    spec
        The service.
    follow_interval
        Seconds between two checks of the registry's active version; default 0.1 for the
        home's registry (a ``stat``), 1.0 for a shared one (a ``HEAD`` request).
    """

    def __init__(self, spec: ServiceSpec, *, follow_interval: float | None = None) -> None:
        from ..orchestrator import Orchestrator

        self.spec = spec
        self.layout = HomeLayout(os.path.abspath(spec.home))
        if follow_interval is None:
            follow_interval = 0.1 if spec.shared_registry is None else 1.0
        self.follow_interval = follow_interval
        self._registry: Any = None
        self.follow_errors = 0
        self.follow_error: str | None = None  # why the active version is not served, or None
        self._refused: tuple[int, float] | None = None  # (version, monotonic time of the next try)
        # At start, an active version that cannot be loaded fails the start (never the
        # untrained initial model served in its place).
        version = self._active_version()
        model = self._load(version) if version is not None else spec.build_initial_model()
        # Its own pending table is not used for feedback (the pending ring is, from any
        # worker): keep it small.
        self.orchestrator = Orchestrator(model, spec.model_factory, self.layout.root,
                                         feature_dim=spec.feature_dim, modes=spec.modes,
                                         task=spec.task, factory_kwargs=spec.factory_kwargs,
                                         pending_capacity=64)
        self._slot = self.orchestrator._slot  # the slot its request path reads
        # Orchestrator.infer's compiled body, called without its one-line Python wrapper
        self._answer = self.orchestrator._path.infer
        if version is not None:  # the same model, now with its registry version
            self._slot.swap(model, version)
        self.tunables = None
        if spec.tunables is not None:
            from ..tunables import Tunables

            self.tunables = Tunables(spec.tunables, check_interval=0.1)
        self.segment: Any = None
        self._ring: PendingRing | None = None
        self._finder = PendingFinder(self.layout.root, spec.feedback_ttl_secs)
        # this worker's request numbers: with its segment id, a request's identity in the
        # metric record, the pending ring and its feedback's sample (next() is atomic: a C call)
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Create this process's segment and pending ring; start following the registry."""
        from ..shm import WorkerSegment

        label = "int64" if self.spec.n_classes else "float32"
        self.segment = WorkerSegment.create(self.layout.root, self.spec.feature_dim, label_dtype=label)
        self._record = self.segment.record_answer
        self._ring = PendingRing(self.layout.root, self.spec.feature_dim, self.spec.n_classes,
                                 worker=self.segment.segment_id)
        self._remember = self._ring._writer.add  # PendingRing.add without its Python wrapper
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="vortex-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following; close the segment (read to its end by the control plane) and the
        pending ring (its requests stay answerable by the other workers until their ttl).
        Idempotent.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.segment is not None:
            self.segment.close()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self.orchestrator.close()

    # ------------------------------------------------------------------ following
    def _open_registry(self) -> Any:
        """The registry to follow, opened on first use; None while the home's own has none yet."""
        if self._registry is None:
            if self.spec.shared_registry is None and not os.path.isdir(self.layout.models):
                return None  # not created by this reader: the control plane creates it
            self._registry = self.spec.open_registry()
        return self._registry

    def _active_version(self) -> int | None:
        """The registry's active version (None: no registry or no version yet). Costs a
        ``stat`` (local) or a ``HEAD`` (object storage); the serving log is re-read only when
        its key (ETag) changed.
        """
        registry = self._open_registry()
        return registry.active_version if registry is not None else None

    def _load(self, version: int) -> Any:
        """A new model holding ``version``'s weights, checksum-verified first."""
        from ..training.models import build_model

        model = build_model(self.spec.model_factory, dict(self.spec.factory_kwargs))
        model.load_state_dict(self._registry.load(version))
        return model

    def _refuse(self, version: int, exc: BaseException) -> None:
        """Keep serving what serves; say why once (log and :meth:`status`); retry after
        :data:`REFUSED_RETRY_SECS`, or at once when another version becomes active.
        """
        self.follow_errors += 1
        message = f"model version {version} refused, still serving version {self._slot.version}: {exc}"
        if message != self.follow_error:
            log.error("%s", message)
        self.follow_error = message
        self._refused = (version, time.monotonic() + REFUSED_RETRY_SECS)

    def follow_once(self) -> int | None:
        """Serve the registry's active version if it changed (loaded, verified and warmed up
        before the swap); returns the version now served.
        """
        served = self._slot.version
        active = self._active_version()
        if active is None or active == served:
            self.follow_error = self._refused = None
            return served
        if self._refused is not None and self._refused[0] == active and time.monotonic() < self._refused[1]:
            return served
        import torch

        from ..training.slot import prepare_model

        try:
            model = prepare_model(self._load(active), torch.zeros(1, self.spec.feature_dim))
        except Exception as exc:  # damaged weights, a model that does not fit: keep serving
            self._refuse(active, exc)
            return served
        self._slot.swap(model, active, prepared=True)
        self.follow_error = self._refused = None
        return active

    def _follow(self) -> None:
        while not self._stop.wait(self.follow_interval):
            try:
                self.follow_once()
            except Exception as exc:  # storage unreachable, a damaged serving log: keep serving, retry
                self.follow_errors += 1
                message = f"following the registry's active version failed: {exc}"
                if message != self.follow_error:  # once per distinct failure, not every poll
                    log.warning("%s", message, exc_info=True)
                self.follow_error = message

    # ------------------------------------------------------------------ request path
    def infer(self, x: Any, mode: str = "fast") -> Any:
        """Answer ``x`` (as :meth:`vortex.Orchestrator.infer`); the returned prediction's
        ``request_id`` is the HTTP request's id (:data:`current_request`; minted outside an
        HTTP request), which :meth:`feedback` on any worker of the home accepts.
        """
        if self._ring is None:
            raise RuntimeError("ServingWorker.infer() before start()")
        context = current_request.get()
        prediction = self._answer(x, mode)  # validates x: the ring takes it as it is
        number, version = next(self._numbers), prediction.model_version
        if context is None:
            request_id = mint_request_id()
            self._record(prediction.latency_ms, prediction.confidence, number, version)
        else:  # the middleware records it when the response is sent
            request_id = context.request_id
            context.answered(prediction.confidence, number, version)
        self._remember(request_id, x, version, prediction.confidence, prediction.output,
                       prediction.probabilities, time.time(), number)
        # The HTTP request id (a string) where the orchestrator put its own counter's. The
        # prediction was built for this call and nobody else holds it yet: set in place
        # rather than copied (dataclasses.replace costs about 5 us).
        object.__setattr__(prediction, "request_id", request_id)
        return prediction

    def feedback(self, request_id: Any, label: Any, *, episode: Any = 0) -> float:
        """Record the ground truth of a request answered by any worker of the home; returns
        its prediction error (as :meth:`vortex.Orchestrator.feedback`). Once it returns, the
        labelled sample is in this worker's segment: the control plane gets it even if this
        process dies the next instant.

        Raises
        ------
        UnknownRequestError
            Unknown, evicted, expired, or answered already (by this worker).
        ValueError
            A bad ``request_id``, ``label`` or ``episode``, naming it; nothing is recorded and
            a corrected feedback may follow.
        """
        request_id = check_request_id(request_id)
        if type(episode) is not int or not INT64_MIN <= episode <= INT64_MAX:
            episode = as_index(episode, "episode")
        entry = self._finder.take(request_id)
        try:
            # the figures vortex.Orchestrator.feedback gives its change board, for the control
            # plane's (the post-swap and post-apply watches)
            nll = None
            if self.spec.n_classes:
                label = as_class_label(label, self.spec.n_classes)
                p = float(entry.probabilities[label])
                error = 1.0 - p
                correct = int(entry.output) == label
                nll = -math.log(p) if p > 0.0 else NLL_CAP
            else:
                label = as_real(label, "label", "must be a finite number")
                if not math.isfinite(label):
                    raise ValueError(f"label={label!r}: must be a finite number")
                error = min(1.0, abs(entry.output - label))
                correct = error < 0.5
            self.segment.push_feedback(entry.features, label, entry.confidence, error, episode, entry.worker,
                                       entry.request, entry.version, 0.0 if correct else 1.0, nll)
        except BaseException:
            self._finder.give_back(request_id)
            raise
        return error

    # ------------------------------------------------------------------ status
    def serving_log(self) -> list[dict[str, Any]]:
        """The registry's swaps and rollbacks, oldest first (empty before the first)."""
        return self._registry.serving_log() if self._registry is not None else []

    def status(self) -> dict[str, Any]:
        """What this worker serves and has recorded."""
        seg = self.segment
        return {
            "pid": os.getpid(),
            "model_version": self._slot.version,
            "swapped_at": self._slot.swapped_at,
            "tunables": dict(self.tunables.values()) if self.tunables is not None else {},
            "records": seg.records if seg is not None and not seg.closed else None,
            "samples": seg.samples if seg is not None and not seg.closed else None,
            "follow_errors": self.follow_errors,
            "follow_error": self.follow_error,
            "registry": self._registry.root if self._registry is not None else None,
        }
