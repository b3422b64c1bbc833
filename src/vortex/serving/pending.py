"""Requests awaiting feedback, findable from every worker of a home: :class:`PendingRing`.

Behind ``uvicorn --workers N`` the kernel hands each connection to whichever worker accepts
it, so the feedback for a request usually reaches another worker than the one that served
it. Each worker therefore keeps what feedback needs (features, class probabilities or
output, confidence, model version, when, and the request's number in its worker) in its own
single-writer ring in shared memory,
next to its metric segment; the worker that receives the feedback finds the request by the
hash of its request id in every worker's ring (one vectorised comparison per ring), computes
the error and pushes the labelled sample into *its own* segment. No socket, no lock shared
between processes.

Slot protocol (a seqlock, as in docs/SHM.md): ``seq`` is ``2n+1`` while entry ``n`` is being
written, ``2n+2`` once complete (release stores, by the compiled
``vortex._fast_serving.PendingSlots``, one call per request); a reader copies the slot and
re-reads ``seq``: equal and even means the copy is whole. Entry ``n`` lives in slot
``n % capacity``, so a ring keeps the newest ``capacity`` requests; older ones are gone (their
feedback is refused as unknown). The keys are also kept in an array of their own before the
slots (8 bytes a request), so that a lookup compares 256 KiB per ring rather than striding
through every slot; the slot's own copy of the key, read under its seq, is what decides.

File layout: 64-byte header (magic, feature_dim, output count, capacity, the worker's segment
id), ``capacity`` keys (uint64), then ``capacity`` slots. The segment id and the request number
travel with the feedback's sample, so the control plane links its error to exactly the
request's metric record (docs/SHM.md).

A worker consumes a request id once (a second feedback for it on the same worker is
refused). Two feedbacks for one id reaching two different workers at the same instant can
both be accepted: nothing shared between processes serialises them (documented in
docs/SERVING.md).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fast_serving import PendingSlots, request_key_of
from ..errors import UnknownRequestError
from ..shm.location import ensure_private_dir, segment_dir

__all__ = ["PendingEntry", "PendingFinder", "PendingRing", "remove_dead_rings", "request_key"]

_PREFIX, _SUFFIX = "pending-", ".ring"
_NAME_RE = re.compile(r"^pending-[0-9a-f]{16}\.ring$")
_HEADER = 64
_MAGIC = b"VTXPEND3"  # 2: keys from request_key_of (1: blake2b); 3: worker id, request numbers


def request_key(request_id: str) -> int:
    """The 63-bit key a request id is stored under (0 is never a key: it marks empty slots).

    A fast non-cryptographic hash of its UTF-8 bytes (computed in C, the same function the
    request path's writer uses): the key only narrows the search, the slot's own copy of it
    under its seq decides, and a client choosing its ``X-Request-ID`` can only make it collide
    with ids it knows (whose feedback it could send anyway).
    """
    return request_key_of(request_id.encode("utf-8", "surrogatepass"))


def _as_row(features: Any) -> np.ndarray:
    """``features`` as one C-contiguous float32 row (the writer's general case)."""
    return np.ascontiguousarray(np.asarray(features, dtype=np.float32).reshape(-1))


def _slot_dtype(feature_dim: int, n_outputs: int) -> np.dtype:
    return np.dtype([("seq", "<u8"), ("key", "<i8"), ("created", "<f8"), ("version", "<i8"),
                     ("confidence", "<f8"), ("output", "<f8"), ("request", "<i8"),
                     ("outputs", "<f8", (n_outputs,)),
                     ("features", "<f4", (feature_dim,))])


@dataclass(frozen=True)
class PendingEntry:
    """What the feedback of one request needs (a copy, taken whole)."""

    key: int
    created: float  # time.time() of the answer
    version: int | None
    confidence: float
    output: float
    probabilities: np.ndarray  # classification (regression: unused)
    features: np.ndarray
    worker: int  # the answering worker's segment id (0: not known)
    request: int | None  # its request number there (vortex.shm.MetricRecords.request)


class PendingRing:
    """The ring of this worker's requests awaiting feedback (create it after the fork).

    Parameters
    ----------
    home
        The Vortex home (the ring lives in its segment directory).
    feature_dim
        Length of a feature row.
    n_outputs
        Class count (classification), or 0 (regression: the output is a number).
    capacity
        Requests kept; the oldest's feedback is refused once ``capacity`` newer ones came.
    worker
        This worker's segment id (:attr:`vortex.shm.WorkerSegment.segment_id`), given to
        every feedback of its requests.
    """

    def __init__(self, home: str | os.PathLike[str], feature_dim: int, n_outputs: int,
                 capacity: int = 32768, worker: int = 0) -> None:
        directory = segment_dir(home)
        ensure_private_dir(directory, create=True)
        self.capacity = int(capacity)
        self.dtype = _slot_dtype(feature_dim, max(1, n_outputs))
        self.path = directory / f"{_PREFIX}{secrets.token_hex(8)}{_SUFFIX}"
        keys_at = _HEADER
        slots_at = keys_at + 8 * self.capacity
        size = slots_at + self.capacity * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # held while the worker lives: its rings are live
        os.posix_fallocate(self._fd, 0, size)
        header = np.zeros(_HEADER, np.uint8)
        header[:8] = np.frombuffer(_MAGIC, np.uint8)
        header[8:40] = np.array([feature_dim, max(1, n_outputs), self.capacity, worker], "<u8").view(np.uint8)
        os.pwrite(self._fd, header.tobytes(), 0)
        self._mm = mmap.mmap(self._fd, size)
        self._slots = np.frombuffer(self._mm, self.dtype, self.capacity, slots_at)  # for inspection
        # the request path writes through one compiled call (a NumPy field assignment costs
        # about 1 us each, struct and slice copies about 6 us a request; this well under 1 us)
        self._writer = PendingSlots(self._mm, keys_at, slots_at, self.capacity, self.dtype.itemsize,
                                    max(1, n_outputs), feature_dim, _as_row)

    def add(self, request_id: str, features: Any, version: int | None, confidence: float,
            output: float, probabilities: tuple[float, ...] | None, created: float | None = None,
            request: int | None = None) -> int:
        """Store one answered request under ``request_id`` (answered at ``created``, default
        now; ``request``: its number in this worker, as its metric record has it); returns its
        key. ``features`` is one row of ``feature_dim`` numbers (a C-contiguous float32 array
        is copied as it is).
        """
        return self._writer.add(request_id, features, version, confidence, output, probabilities,
                                time.time() if created is None else created, request)

    def close(self) -> None:
        """Unmap the ring and release it. The file stays: the other workers still answer the
        feedback of its requests, until :func:`remove_dead_rings` removes it after their ttl.
        """
        del self._slots  # the views of the mapping, before the mapping closes
        self._writer.release()
        self._mm.close()
        os.close(self._fd)


class _RingView:
    """A read-only mapping of one worker's ring."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            header = f.read(_HEADER)
        if len(header) != _HEADER or header[:8] != _MAGIC:
            raise ValueError(f"{path} is not a pending ring")
        dim, n_out, capacity, self.worker = (int(v) for v in np.frombuffer(header[8:40], "<u8"))
        self.dtype = _slot_dtype(dim, n_out)
        if os.path.getsize(path) != _HEADER + capacity * (8 + self.dtype.itemsize):
            raise ValueError(f"{path} is not a whole pending ring")
        self.keys = np.memmap(path, "<i8", "r", _HEADER, (capacity,))
        self.slots = np.memmap(path, self.dtype, "r", _HEADER + 8 * capacity, (capacity,))

    def find(self, key: int) -> PendingEntry | None:
        for i in np.flatnonzero(self.keys == key)[::-1]:
            s1 = int(self.slots["seq"][i])
            row = self.slots[i].copy()
            if s1 % 2 or s1 == 0 or int(self.slots["seq"][i]) != s1 or int(row["key"]) != key:
                continue  # being written or overwritten meanwhile
            version, request = int(row["version"]), int(row["request"])
            return PendingEntry(key, float(row["created"]), None if version < 0 else version,
                                float(row["confidence"]), float(row["output"]),
                                np.array(row["outputs"], np.float64), np.array(row["features"]),
                                self.worker, None if request < 0 else request)
        return None


class PendingFinder:
    """Finds request ids in every worker's ring of a home (rings mapped once, then cached)."""

    def __init__(self, home: str | os.PathLike[str], ttl_secs: float, consumed_capacity: int = 1 << 17) -> None:
        self.directory = segment_dir(home)
        self.ttl_secs = ttl_secs
        self._views: dict[str, _RingView] = {}
        self._consumed: OrderedDict[int, None] = OrderedDict()
        self._consumed_capacity = consumed_capacity
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            names = {n for n in os.listdir(self.directory) if _NAME_RE.match(n)}
        except FileNotFoundError:
            names = set()
        for gone in set(self._views) - names:
            del self._views[gone]
        for name in names - set(self._views):
            try:
                self._views[name] = _RingView(self.directory / name)
            except (OSError, ValueError):  # removed meanwhile, or being created
                continue

    def take(self, request_id: str) -> PendingEntry:
        """The entry of ``request_id``, consumed (a second ``take`` of it here fails).

        Raises
        ------
        UnknownRequestError
            No worker holds it (never issued, evicted, or its ring removed after the ttl), it
            expired, or this worker already took its feedback.
        """
        key = request_key(request_id)
        with self._lock:
            if key in self._consumed:
                raise UnknownRequestError(f"request_id {request_id!r} already has its feedback")
            entry = self._find(key)
            if entry is None:
                self._refresh()  # a worker started since, or a ring was replaced
                entry = self._find(key)
            if entry is None:
                raise UnknownRequestError(
                    f"request_id {request_id!r} is unknown: never answered, or evicted from its "
                    "worker's pending ring")
            if time.time() - entry.created > self.ttl_secs:
                raise UnknownRequestError(
                    f"request_id {request_id!r} expired: feedback came more than "
                    f"{self.ttl_secs:g} s after the request")
            self._consumed[key] = None
            if len(self._consumed) > self._consumed_capacity:
                self._consumed.popitem(last=False)
            return entry

    def give_back(self, request_id: str) -> None:
        """Undo :meth:`take` (the feedback was refused after all: a corrected one may follow)."""
        with self._lock:
            self._consumed.pop(request_key(request_id), None)

    def _find(self, key: int) -> PendingEntry | None:
        best = None
        for view in list(self._views.values()):
            entry = view.find(key)
            if entry is not None and (best is None or entry.created > best.created):
                best = entry  # a client that reused an X-Request-ID: its newest request
        return best


def remove_dead_rings(home: str | os.PathLike[str], ttl_secs: float) -> list[str]:
    """Remove the rings of workers that are gone (their ``flock`` is free) once their newest
    request is older than ``ttl_secs`` (until then its feedback is still accepted by the other
    workers); the control plane calls it. Returns the names removed.
    """
    directory = segment_dir(home)
    removed: list[str] = []
    try:
        names = [n for n in os.listdir(directory) if _NAME_RE.match(n)]
    except FileNotFoundError:
        return removed
    for name in names:
        try:
            fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            newest = _RingView(directory / name).slots["created"].max(initial=0.0)
            if time.time() - float(newest) > ttl_secs:
                os.unlink(directory / name)
                removed.append(name)
        except (OSError, ValueError):
            pass  # a live worker's, or one being created
        finally:
            os.close(fd)
    return removed
