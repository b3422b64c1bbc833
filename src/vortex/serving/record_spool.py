"""A bounded ring of request records, numbered by ``seq``, saved as a sealed Arrow file.

:class:`RecordSpool` holds what a machine without the fleet's lease forwards of its requests
to the control plane's detector, tracker and change board (:mod:`vortex.serving.replica`):
per request its wall-clock time, latency, confidence, error (NaN without ground truth) and
the model version that answered (-1: none). It has the interface of
:class:`~vortex.training.SampleBuffer` that a spool needs (``extend``, ``snapshot``,
``next_seq``, ``drop_older_than``, ``save``, ``load``, ``saved_metadata``), in NumPy: the
oldest rows are overwritten when it is full.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import SnapshotFormatError
from ..training.buffer import read_sealed_ipc, write_sealed_ipc

__all__ = ["RECORDS_FORMAT", "RecordSpool"]

#: Value of the ``vortex.format`` schema metadata key of a saved record spool.
RECORDS_FORMAT = "vortex.records/1"
_FIELDS = (("seq", np.int64), ("timestamp", np.float64), ("latency_ms", np.float64),
           ("confidence", np.float64), ("error", np.float64), ("version", np.int64))
ROW = np.dtype(list(_FIELDS))
_NAMES = tuple(name for name, _ in _FIELDS)
_VALUES = _NAMES[1:]  # what a caller passes; seq is the spool's own numbering
_REMEDY = "move it aside; its replica starts a new record spool (its unmerged records are lost)"


class RecordSpool:
    """Request records, the newest ``capacity`` of them, numbered 0, 1, ... by ``seq``.

    Parameters
    ----------
    capacity
        Rows kept; an :meth:`extend` beyond it overwrites the oldest.

    Notes
    -----
    Not thread-safe: one writer (the spool writer's thread).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"capacity={capacity!r} must be a positive integer")
        self._rows = np.zeros(int(capacity), ROW)
        self._start = 0      # ring position of the oldest row
        self._len = 0
        self._next_seq = 0
        #: The schema metadata of the file :meth:`load` read (empty for a new spool).
        self.saved_metadata: dict[str, str] = {}

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"RecordSpool(capacity={self.capacity}, len={len(self)}, next_seq={self.next_seq})"

    @property
    def capacity(self) -> int:
        """Maximum number of rows kept."""
        return len(self._rows)

    @property
    def next_seq(self) -> int:
        """The seq the next appended record gets."""
        return self._next_seq

    def extend(self, **columns: np.ndarray) -> int:
        """Append records given as equal-length 1-D arrays ``timestamp`` (seconds since the
        epoch), ``latency_ms``, ``confidence``, ``error`` and ``version``; returns how many.
        """
        if set(columns) != set(_VALUES):
            raise ValueError(f"columns {sorted(columns)} must be {sorted(_VALUES)}")
        n = len(columns["timestamp"])
        if any(np.shape(v) != (n,) for v in columns.values()):
            raise ValueError(f"columns of lengths {[np.shape(v) for v in columns.values()]}: must be 1-D of one length")
        cap = self.capacity
        skip = max(0, n - cap)  # more than the ring holds: only the newest are written
        overflow = max(0, self._len + n - cap)
        positions = (self._start + self._len + np.arange(skip, n)) % cap
        for name in _VALUES:
            self._rows[name][positions] = columns[name][skip:]
        self._rows["seq"][positions] = np.arange(self._next_seq + skip, self._next_seq + n)
        self._next_seq += n
        self._start = (self._start + overflow) % cap
        self._len = min(cap, self._len + n)
        return n

    def snapshot(self) -> np.recarray:
        """A copy of every row, oldest first (fields ``seq``, ``timestamp``, ``latency_ms``,
        ``confidence``, ``error``, ``version``).
        """
        return self._rows[(self._start + np.arange(self._len)) % self.capacity].view(np.recarray)

    def drop_older_than(self, seq: int) -> int:
        """Drop the rows numbered below ``seq`` (the merged ones); returns how many."""
        k = min(self._len, max(0, seq - (self._next_seq - self._len)))
        self._start = (self._start + k) % self.capacity
        self._len -= k
        return k

    # ----------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
             metadata: dict[str, str] | None = None) -> int:
        """Write every row as a sealed Arrow IPC file (whole or not at all, as
        :meth:`vortex.training.SampleBuffer.save`), ``metadata`` in its schema; returns the
        saved ``next_seq``.
        """
        import pyarrow as pa

        rows = self.snapshot()
        meta = {**(metadata or {}), "vortex.format": RECORDS_FORMAT, "vortex.next_seq": str(self._next_seq),
                "vortex.capacity": str(self.capacity)}
        batch = pa.RecordBatch.from_arrays([pa.array(np.ascontiguousarray(rows[name])) for name in _NAMES],
                                           schema=_schema().with_metadata(meta))
        write_sealed_ipc(path, batch, storage_options)
        return self._next_seq

    @classmethod
    def load(cls, path: str | os.PathLike[str], capacity: int | None = None, *,
             storage_options: dict[str, Any] | None = None) -> RecordSpool:
        """A spool holding the rows :meth:`save` wrote to ``path`` (the newest ``capacity``;
        None keeps the saved capacity), numbering on from the saved ``next_seq``.

        Raises
        ------
        SnapshotFormatError
            The file is damaged or not a record spool (naming it).
        FileNotFoundError
            There is none.
        """
        path = os.fspath(path)
        table, meta, sealed = read_sealed_ipc(path, storage_options, _REMEDY)

        def bad(problem: str) -> SnapshotFormatError:
            return SnapshotFormatError(path, problem, remedy=_REMEDY)

        if not sealed or meta.get("vortex.format") != RECORDS_FORMAT:
            raise bad(f"not a sealed record spool (vortex.format {meta.get('vortex.format')!r})")
        if not table.schema.equals(_schema(), check_metadata=False):
            raise bad(f"schema {table.schema.remove_metadata()} is not a record spool's")
        try:
            next_seq, saved_capacity = int(meta["vortex.next_seq"]), int(meta["vortex.capacity"])
        except (KeyError, ValueError) as exc:
            raise bad(f"bad next_seq/capacity metadata ({exc!r})") from exc
        columns = {name: table.column(name).to_numpy() for name in _NAMES}
        n = table.num_rows
        if saved_capacity < 1 or next_seq < n or not np.array_equal(
                columns["seq"], np.arange(next_seq - n, next_seq, dtype=np.int64)):
            raise bad(f"seq column is not the run ending at next_seq - 1 = {next_seq - 1}, or capacity "
                      f"{saved_capacity} is not positive")
        spool = cls(saved_capacity if capacity is None else capacity)
        spool._next_seq = next_seq - n
        spool.extend(**{name: columns[name] for name in _VALUES})
        spool.saved_metadata = meta
        return spool


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([pa.field(name, pa.from_numpy_dtype(ROW[name]), nullable=False) for name in _NAMES])
