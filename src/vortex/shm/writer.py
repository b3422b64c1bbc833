"""The serving worker's side: :class:`WorkerSegment`, its own metric window, sample ring and
histograms in shared memory.

One worker process writes one segment; the control plane reads every worker's segment with
:class:`vortex.shm.FleetReader`. The per-request calls cost what the in-process ones do
(:meth:`vortex.RuntimeDetector.record_sample`, :meth:`vortex.training.SampleBuffer.push`): no
socket, no pickling, no system call, no lock another process could hold.
"""

from __future__ import annotations

import os
import secrets
import weakref
from pathlib import Path
from typing import Any

from .._fast_shm import SegmentRecorder
from .._io import _start_time, remove_orphan_temps
from .._native import _core
from .._scalars import as_index
from .location import ensure_private_dir, segment_dir, segment_name

__all__ = ["LABEL_KINDS", "WorkerSegment"]

LABEL_KINDS = {"int64": 0, "float32": 1}
_MAX_DIM = 1 << 20
_MAX_CAPACITY = 1 << 32

# Segments this process writes; a child forked from it must not write them (see _after_fork).
_OPEN: weakref.WeakSet[WorkerSegment] = weakref.WeakSet()


class WorkerSegment(SegmentRecorder):
    """A serving worker's shared-memory segment, written by this process only.

    Create it with :meth:`create` in the worker process (after any fork). Per request:
    ``record_sample(latency_ms, confidence, prediction_error=nan, *, failed=False)`` (as
    :meth:`vortex.RuntimeDetector.record_sample`) or, naming the request,
    ``record_answer(latency_ms, confidence, request, version, failed=False)`` (its number in
    this worker and the model version that answered); when a labelled sample is due for
    training, ``push(features, label, confidence=1.0, error=nan, episode=0, timestamp=None)``
    (as :meth:`vortex.training.SampleBuffer.push`; returns the sample's seq in this segment) or,
    naming the request it labels, ``push_feedback(features, label, confidence, error, episode,
    worker, request, version, misclassified, nll, timestamp=None)`` (``worker``: the answering
    worker's :attr:`segment_id`; the control plane links the error to that request's record).
    Both validate their arguments the same way as the in-process calls (``ValueError`` naming
    the bad value; nothing stored) and are safe from several threads.

    The segment stays readable after the worker exits or is killed: the control plane reads it
    to its last complete record, folds its histograms and removes it. :meth:`close` marks a
    clean exit. A child process forked from the writer cannot write the segment (its calls
    raise ``ValueError``); it creates its own.

    Attributes
    ----------
    path
        The segment file (see :mod:`vortex.shm.location` for where and why).
    segment_id
        Its random 64-bit id (in its name and header): names this worker in the samples of
        its requests' feedback, whichever worker pushes them.
    feature_dim, window, ring_capacity, label_dtype
        Its shape: feature row length, metric records kept, samples kept, label type.
    """

    path: Path
    segment_id: int
    feature_dim: int
    window: int
    ring_capacity: int
    label_dtype: str
    _writer: Any  # the vortex._core.ShmWriter that owns the mapping
    _pid: int  # the creating process (a forked child must not close its parent's segment)

    def __init__(self) -> None:  # use create()
        raise TypeError("use WorkerSegment.create(home, feature_dim, ...)")

    @classmethod
    def create(cls, home: str | os.PathLike[str], feature_dim: int, window: int = 16384,
               ring_capacity: int = 10_000, label_dtype: str = "int64") -> WorkerSegment:
        """Create this process's segment for ``home``.

        Parameters
        ----------
        home
            The Vortex home the control plane reads (need not exist when the segments live in
            ``/dev/shm``).
        feature_dim
            Length of every pushed feature row.
        window
            Metric records kept (120 bytes each, slot included). The control plane must read more often than
            the worker fills it, or it loses records (it is told how many).
        ring_capacity
            Samples kept (80 + 4 * feature_dim bytes each), the same rule.
        label_dtype
            ``"int64"`` (classification) or ``"float32"`` (regression).

        Raises
        ------
        ValueError
            A shape argument out of range, naming it.
        OSError
            The file could not be created (``ENOSPC``: ``/dev/shm`` is full).
        vortex.shm.location.SegmentDirError
            The segment directory is not this user's private directory.
        """
        dim = as_index(feature_dim, "feature_dim", 1, _MAX_DIM)
        window = as_index(window, "window", 1, _MAX_CAPACITY)
        ring_capacity = as_index(ring_capacity, "ring_capacity", 1, _MAX_CAPACITY)
        if label_dtype not in LABEL_KINDS:
            raise ValueError(f"label_dtype={label_dtype!r} must be 'int64' or 'float32'")
        directory = segment_dir(home)
        ensure_private_dir(directory, create=True)
        remove_orphan_temps(directory)  # creations killed half-way, by any worker
        pid = os.getpid()
        start = int(_start_time(pid) or 0)
        segment_id = secrets.randbits(64)
        name = segment_name(pid, start, segment_id)
        owner = _core.ShmWriter(os.fspath(directory), name, dim, LABEL_KINDS[label_dtype], window,
                                ring_capacity, pid, start, segment_id)
        self = cls.__new__(cls)
        self._attach(owner, dim, label_dtype == "float32")
        self._writer = owner
        self.path = directory / name
        self.segment_id = segment_id
        self.feature_dim = dim
        self.window = window
        self.ring_capacity = ring_capacity
        self.label_dtype = label_dtype
        self._pid = pid
        _OPEN.add(self)
        return self

    @property
    def records(self) -> int:
        """Metric records written (``record_sample`` calls)."""
        return int(self._writer.records)

    @property
    def samples(self) -> int:
        """Samples pushed."""
        return int(self._writer.samples)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or in a process forked from the writer)."""
        return not self._writer.is_open or self._pid != os.getpid()

    def close(self) -> None:
        """Mark the segment closed (a clean exit) and release it; later calls raise ValueError.

        The file stays for the control plane, which reads it to the end and removes it.
        """
        self._detach()
        if self._pid == os.getpid():
            self._writer.close()
        _OPEN.discard(self)

    def __enter__(self) -> WorkerSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"records={self.records}, samples={self.samples}"
        return f"WorkerSegment({str(self.path)!r}, feature_dim={self.feature_dim}, {state})"

    def _abandon(self) -> None:
        self._detach()
        self._writer.abandon()


def _after_fork() -> None:
    """In a forked child: the parent's segments are the parent's. Drop their mappings (the
    parent's lock stays with the parent's descriptor) so the child can never write them.
    """
    for seg in list(_OPEN):
        seg._abandon()
    _OPEN.clear()


os.register_at_fork(after_in_child=_after_fork)
