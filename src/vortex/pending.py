"""The table of requests awaiting their feedback (ground truth), owned by the orchestrator."""

from __future__ import annotations

import itertools
import threading
import time

from ._fast_serving import pending_add
from .errors import UnknownRequestError

__all__ = ["PendingTable"]


class PendingTable:
    """Bounded, expiring map of request id -> what feedback needs; it hands out the ids.

    Lock-free, and safe from any number of threads, because every mutation is one call that the
    GIL makes atomic (and that free-threaded CPython guards with the dict's own lock):
    ``next()`` on an ``itertools.count``, ``dict.__setitem__`` and ``dict.pop`` with int keys
    (their hash and equality run no Python code). Ids are consecutive, so storing id ``k``
    evicts id ``k - capacity``: the table keeps the newest ``capacity`` requests, and a
    feedback either pops its entry or finds nothing (answered, evicted or never issued), never
    both for two threads. A thread preempted between taking an id and storing it can store
    an id that was already due for eviction; :meth:`_sweep` (rare, under a lock) drops those
    once the table has grown ``capacity // 8 + 64`` beyond its bound.

    An entry is the tuple ``(detector_id, features, probabilities, output, confidence, mode,
    model_version, created)``, ``created`` from ``time.perf_counter``.
    """

    def __init__(self, capacity: int, ttl_secs: float) -> None:
        self._items: dict[int, tuple] = {}
        self._ids = itertools.count(1)
        self._sweep_lock = threading.Lock()
        self._sweep_above = capacity + capacity // 8 + 64
        self.capacity = capacity
        self.ttl_secs = ttl_secs

    def add(self, item: tuple) -> int:
        """Store ``item`` under the next request id and return that id (compiled: the request
        path calls the same code directly).
        """
        return pending_add(self, item)

    def _sweep(self, newest: int) -> None:
        with self._sweep_lock:
            items = self._items
            for request_id in [k for k in list(items) if k <= newest - self.capacity]:
                items.pop(request_id, None)

    def peek(self, request_id: int) -> tuple:
        """The entry of ``request_id``, left in place (so that feedback can check its
        arguments against it before :meth:`pop` consumes it).

        Raises
        ------
        UnknownRequestError
            No such entry, or it expired (an expired entry is dropped).
        """
        item = self._items.get(request_id)
        if item is None:
            raise self._unknown(request_id)
        if time.perf_counter() - item[7] > self.ttl_secs:
            self._items.pop(request_id, None)
            raise UnknownRequestError(
                f"request_id {request_id!r} expired: feedback came more than {self.ttl_secs:g} s "
                "after the request")
        return item

    def pop(self, request_id: int) -> tuple:
        """Remove and return the entry of ``request_id`` (consumes it: call :meth:`peek` first).

        Of several threads popping the same id, exactly one gets the entry; the others get
        :class:`UnknownRequestError`.
        """
        item = self._items.pop(request_id, None)
        if item is None:
            raise self._unknown(request_id)
        return item

    def _unknown(self, request_id: int) -> UnknownRequestError:
        return UnknownRequestError(
            f"request_id {request_id!r} is unknown, already answered, or was evicted from the "
            f"pending table (capacity {self.capacity})")

    def __len__(self) -> int:
        return len(self._items)
