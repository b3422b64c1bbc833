"""Which detector record a feedback's error belongs to: :class:`RequestLinks`.

A request is recorded by the worker that answered it (its metric record carries the worker's
request number) and its feedback is pushed by whichever worker took it (the sample names the
answering worker's segment id and that request number). The control plane reads both, in
any order, and links them here: per answering worker, a direct-mapped table from request
number to the detector id its record got (``request % size``), so the newest ``size``
requests of each worker are always found, older ones are overwritten by newer (evicted), and
no Python object is kept per request. Lookups and insertions are NumPy operations over a
batch.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

__all__ = ["RequestLinks"]


class _Table:
    """One worker's requests: ``request[slot]`` (-1 empty), its detector id, and whether an
    error was attached to it already.
    """

    def __init__(self, size: int) -> None:
        self.request = np.full(size, -1, np.int64)
        self.detector_id = np.zeros(size, np.int64)
        self.labelled = np.zeros(size, bool)
        self.newest = -1  # the highest request number recorded


class RequestLinks:
    """(answering worker's segment id, request number) -> detector id of its metric record.

    Parameters
    ----------
    per_worker
        Requests remembered per worker (a power of two): a feedback arriving after this many
        newer requests of its worker is not found (:meth:`find` returns -1 for it).
    workers
        Workers remembered (the least recently recorded one is forgotten first).
    """

    def __init__(self, per_worker: int = 1 << 16, workers: int = 64) -> None:
        if per_worker <= 0 or per_worker & (per_worker - 1):
            raise ValueError(f"per_worker={per_worker!r} must be a power of two")
        self._mask = per_worker - 1
        self._size = per_worker
        self._workers = workers
        self._tables: OrderedDict[int, _Table] = OrderedDict()

    def add(self, worker: int, requests: np.ndarray, detector_ids: np.ndarray | list[int]) -> None:
        """Remember the detector ids of ``worker``'s records (``requests[i]`` got
        ``detector_ids[i]``; -1, a record of no request, is skipped).
        """
        table = self._tables.get(worker)
        if table is None:
            table = self._tables[worker] = _Table(self._size)
            if len(self._tables) > self._workers:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(worker)
        known = requests >= 0
        numbers = requests[known]
        if not len(numbers):
            return
        slots = numbers & self._mask
        table.request[slots] = numbers
        table.detector_id[slots] = np.asarray(detector_ids, np.int64)[known]
        table.labelled[slots] = False
        table.newest = max(table.newest, int(numbers.max()))

    def find(self, workers: np.ndarray, requests: np.ndarray) -> np.ndarray:
        """The detector id of each ``(workers[i], requests[i])``, -1 where it is not known;
        those found are marked labelled.
        """
        out = np.full(len(requests), -1, np.int64)
        for worker in np.unique(workers).tolist():
            table = self._tables.get(worker)
            if table is None:
                continue
            rows = np.flatnonzero(workers == worker)
            numbers = requests[rows]
            slots = numbers & self._mask
            hit = (numbers >= 0) & (table.request[slots] == numbers)
            out[rows[hit]] = table.detector_id[slots[hit]]
            table.labelled[slots[hit]] = True
        return out

    def not_read_yet(self, worker: int, request: int) -> bool:
        """Whether ``worker``'s record of ``request`` may still come (its number is above the
        newest read so far): a feedback can overtake its request's record, which the worker
        writes once the response is sent.
        """
        table = self._tables.get(worker)
        return request >= 0 and (table is None or request > table.newest)

    def newest_unlabelled(self, worker: int) -> int | None:
        """The detector id of ``worker``'s newest remembered record without an error (marked
        labelled now), or None: where the error of a request no longer known is counted.
        """
        table = self._tables.get(worker)
        if table is None:
            return None
        free = np.flatnonzero((table.request >= 0) & ~table.labelled)
        if not len(free):
            return None
        slot = free[np.argmax(table.request[free])]
        table.labelled[slot] = True
        return int(table.detector_id[slot])
