"""The sample ring: served samples waiting to be trained on.

:class:`SampleBuffer` is a columnar ring buffer in C++ (``csrc/sample_ring.hpp``) with a Cython
``push`` for the request path. :class:`Snapshot` is a consistent copy of some of its rows as
NumPy arrays, convertible to a pyarrow RecordBatch or torch tensors without copying, and
persisted as an Arrow IPC file.

Example
-------
>>> buf = SampleBuffer(feature_dim=4, capacity=1000)
>>> buf.push([0.1, 0.2, 0.3, 0.4], label=1, confidence=0.9)
0
>>> snap = buf.snapshot()
>>> snap.features.shape, snap.seq.tolist()
((1, 4), [0])
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._fast_ring import SampleRingWriter
from .._fsspec import is_url, read_url, write_url
from .._io import atomic_write_sealed, is_arrow_ipc_file, read_sealed, remove_orphan_temps, seal, unseal
from .._native import _core
from ..errors import SnapshotFormatError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow
    import torch

__all__ = ["FORMAT_TAG", "SampleBuffer", "Snapshot"]

log = logging.getLogger(__name__)

#: Value of the ``vortex.format`` schema metadata key in every file written here.
FORMAT_TAG = "vortex.samples/1"
_CRC_KEY = "vortex.crc32"
_REMEDY = ("restore it from a backup, or move it aside (a saved buffer: its samples are lost and "
           "the buffer starts empty; a run's snapshot: the next run writes a new one)")

_LABEL_KINDS = {"int64": 0, "float32": 1}
_COLUMNS = ("labels", "confidence", "error", "timestamp", "seq", "episode")
# Arrow column name and NumPy dtype of each column after "features" (labels depend on the buffer).
_ARROW_NAMES = {"labels": "label", "confidence": "confidence", "error": "error",
                "timestamp": "timestamp", "seq": "seq", "episode": "episode"}
_DTYPES = {"confidence": np.float32, "error": np.float32, "timestamp": np.float64,
           "seq": np.int64, "episode": np.int64}


def _checksum(arrays: list[np.ndarray], metadata: dict[str, str]) -> str:
    """CRC-32 of the columns' bytes and of the schema metadata (except the checksum itself).

    Files written before the sha256 seal carry it in their metadata; sealed files do not need
    it (the seal covers every byte, and is checked before parsing).
    """
    crc = zlib.crc32(repr(sorted((k, v) for k, v in metadata.items() if k != _CRC_KEY)).encode())
    for a in arrays:
        if a.size:
            crc = zlib.crc32(np.ascontiguousarray(a).data.cast("B"), crc)
    return f"{crc:08x}"


def write_sealed_ipc(path: str | os.PathLike[str], batch: pyarrow.RecordBatch,
                     storage_options: dict[str, Any] | None = None) -> None:
    """Write ``batch`` as an Arrow IPC file ending with a sha256 seal: atomically (temp file,
    fsync, rename) to a path, whole or not at all to an fsspec URL (:mod:`vortex._fsspec`).
    """
    import pyarrow as pa

    # In memory, then one native write: Arrow serialises, hashlib hashes and the write runs
    # with the GIL released, so a periodic save next to serving threads barely touches them.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    body = sink.getvalue()
    if is_url(path):
        write_url(os.fspath(path), body.to_pybytes() + seal(body), storage_options)
    else:
        atomic_write_sealed(path, body)


def read_sealed_ipc(path: str, storage_options: dict[str, Any] | None, remedy: str
                    ) -> tuple[pyarrow.Table, dict[str, str], bool]:
    """``(table, schema metadata, sealed)`` of a file :func:`write_sealed_ipc` wrote (or an
    unsealed Arrow IPC file of before the seal: ``sealed`` False, the caller checks it).

    Raises
    ------
    SnapshotFormatError
        The seal does not verify, or Arrow cannot read the file (naming it, with ``remedy``).
    FileNotFoundError
        There is no such file.
    """
    import pyarrow as pa

    if is_url(path):
        body, sealed = unseal(read_url(path, storage_options), path, SnapshotFormatError,
                              unsealed=is_arrow_ipc_file, remedy=remedy)
    else:
        body, sealed = read_sealed(path, SnapshotFormatError, unsealed=is_arrow_ipc_file, remedy=remedy)
    try:
        table = pa.ipc.open_file(pa.py_buffer(body)).read_all()
        table.validate(full=True)
    except Exception as exc:  # any failure to parse is damage: Arrow raises many kinds
        raise SnapshotFormatError(path, f"not a readable Arrow IPC file ({type(exc).__name__}: {exc})",
                                  remedy=remedy) from exc
    raw_meta = table.schema.metadata or {}
    meta = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw_meta.items()}
    return table, meta, sealed


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A consistent copy of buffered samples.

    Attributes
    ----------
    features : numpy.ndarray
        ``(n, feature_dim)`` float32.
    labels : numpy.ndarray
        ``(n,)`` int64 or float32.
    confidence, error : numpy.ndarray
        ``(n,)`` float32; error is NaN where there was no ground truth.
    timestamp : numpy.ndarray
        ``(n,)`` float64 seconds since the epoch.
    seq, episode : numpy.ndarray
        ``(n,)`` int64 global sequence numbers and episode ids.
    """

    features: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    error: np.ndarray
    timestamp: np.ndarray
    seq: np.ndarray
    episode: np.ndarray

    def __post_init__(self) -> None:
        f = self.features
        if not isinstance(f, np.ndarray) or f.dtype != np.float32 or f.ndim != 2:
            raise ValueError("Snapshot.features must be a 2-D float32 array")
        n = f.shape[0]
        for name in _COLUMNS:
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != (n,):
                raise ValueError(f"Snapshot.{name} must be a 1-D array of length {n}")
            if name in _DTYPES and a.dtype != _DTYPES[name]:
                raise ValueError(f"Snapshot.{name} dtype {a.dtype} should be "
                                 f"{np.dtype(_DTYPES[name])}")
        if self.labels.dtype not in (np.int64, np.float32):
            raise ValueError(f"Snapshot.labels dtype {self.labels.dtype} is not int64 or float32")

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __repr__(self) -> str:
        return (f"Snapshot(rows={len(self)}, feature_dim={self.feature_dim}, "
                f"labels={self.labels.dtype}, seq={self.seq[:1].tolist()}..{self.seq[-1:].tolist()})")

    @property
    def feature_dim(self) -> int:
        """Length of each feature row."""
        return int(self.features.shape[1])

    @property
    def label_dtype(self) -> str:
        """``"int64"`` or ``"float32"``."""
        return str(self.labels.dtype)

    def _arrays(self) -> list[np.ndarray]:
        return [self.features, *(getattr(self, name) for name in _COLUMNS)]

    def schema(self, metadata: dict[str, str] | None = None) -> pyarrow.Schema:
        """The Arrow schema of :meth:`to_arrow` (with ``metadata`` added)."""
        import pyarrow as pa

        fields = [pa.field("features", pa.list_(pa.float32(), self.feature_dim), nullable=False),
                  pa.field("label", pa.from_numpy_dtype(self.labels.dtype), nullable=False)]
        fields += [pa.field(_ARROW_NAMES[name], pa.from_numpy_dtype(_DTYPES[name]), nullable=False)
                   for name in _DTYPES]
        meta = {"vortex.format": FORMAT_TAG, "vortex.feature_dim": str(self.feature_dim),
                "vortex.label_dtype": self.label_dtype, **(metadata or {})}
        return pa.schema(fields, metadata=meta)

    def to_arrow(self, metadata: dict[str, str] | None = None) -> pyarrow.RecordBatch:
        """The rows as a RecordBatch; features as ``FixedSizeList<float32>``.

        The Arrow arrays point at this snapshot's NumPy memory (no copy) when the arrays are
        C-contiguous, which they are for snapshots made by a buffer.
        """
        import pyarrow as pa

        n, d = self.features.shape
        flat = pa.array(np.ascontiguousarray(self.features).reshape(n * d), type=pa.float32())
        columns = [pa.FixedSizeListArray.from_arrays(flat, d)]
        columns += [pa.array(np.ascontiguousarray(getattr(self, name))) for name in _COLUMNS]
        schema = self.schema(metadata)
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def to_torch(self) -> dict[str, torch.Tensor]:
        """The columns as torch tensors sharing this snapshot's memory (``torch.from_numpy``).

        Keys: features, labels, confidence, error, timestamp, seq, episode.
        """
        import torch

        return {"features": torch.from_numpy(self.features),
                **{name: torch.from_numpy(getattr(self, name)) for name in _COLUMNS}}

    def write_ipc(self, path: str | os.PathLike[str], metadata: dict[str, str] | None = None, *,
                  storage_options: dict[str, Any] | None = None) -> None:
        """Write the snapshot as an Arrow IPC file, atomically (temp file, fsync, rename).

        The file ends with a sha256 seal of its contents, checked by :meth:`read_ipc` before
        anything parses it. ``path`` may be an fsspec URL (``s3://bucket/home/buffer.arrow``,
        with ``storage_options`` for its filesystem): the file is then written whole or not at
        all (:mod:`vortex._fsspec`).
        """
        write_sealed_ipc(path, self.to_arrow(metadata), storage_options)

    @classmethod
    def read_ipc(cls, path: str | os.PathLike[str], *,
                 storage_options: dict[str, Any] | None = None) -> Snapshot:
        """Read a file written by :meth:`write_ipc` (or :meth:`SampleBuffer.save`).

        Raises
        ------
        SnapshotFormatError
            The file is damaged (its seal does not verify, or, for a file written before
            files were sealed, it is not a readable Arrow IPC file or its data does not match
            its checksum), or it is not a Vortex sample file. The message names the file.
        FileNotFoundError
            There is no such file.
        """
        snap, _ = cls._read(path, storage_options)
        return snap

    @classmethod
    def _read(cls, path: str | os.PathLike[str],
              storage_options: dict[str, Any] | None = None) -> tuple[Snapshot, dict[str, str]]:
        import pyarrow as pa

        path = os.fspath(path)

        def bad(problem: str) -> SnapshotFormatError:
            return SnapshotFormatError(path, problem, remedy=_REMEDY)

        table, meta, sealed = read_sealed_ipc(path, storage_options, _REMEDY)
        if meta.get("vortex.format") != FORMAT_TAG:
            raise bad(f"vortex.format is {meta.get('vortex.format')!r}, expected {FORMAT_TAG!r}")
        try:
            dim = int(meta["vortex.feature_dim"])
            label_dtype = meta["vortex.label_dtype"]
            crc = None if sealed else meta[_CRC_KEY]  # the older format's own checksum
        except (KeyError, ValueError) as exc:
            raise bad(f"schema metadata incomplete ({exc!r})") from exc
        if label_dtype not in _LABEL_KINDS or dim < 1:
            raise bad(f"bad feature_dim={dim} or label_dtype={label_dtype!r}")
        probe = cls(np.zeros((0, dim), np.float32), np.zeros(0, label_dtype),
                    *(np.zeros(0, _DTYPES[name]) for name in _DTYPES))
        expected = probe.schema(meta)
        if not table.schema.equals(expected, check_metadata=False):
            raise bad(f"schema {table.schema.remove_metadata()} does not match the expected "
                      f"{expected.remove_metadata()}")
        n = table.num_rows
        try:
            table = table.combine_chunks()
            feats = table.column("features").chunk(0).flatten() if n else pa.array([], pa.float32())
            # np.array copies: the snapshot owns writable memory (torch.from_numpy needs it)
            arrays = {"features": np.array(feats.to_numpy(zero_copy_only=False), np.float32)
                      .reshape(n, dim)}
            for name, arrow_name in _ARROW_NAMES.items():
                col = table.column(arrow_name)
                values = col.chunk(0).to_numpy(zero_copy_only=False) if n else np.zeros(0)
                arrays[name] = np.array(values, dtype=label_dtype if name == "labels"
                                        else _DTYPES[name])
            snap = cls(**arrays)
        except Exception as exc:  # nulls, wrong lengths: whatever Arrow or NumPy refuse
            raise bad(f"unreadable columns ({type(exc).__name__}: {exc})") from exc
        if crc is not None and _checksum(snap._arrays(), meta) != crc:
            raise bad("data does not match its checksum (corrupted)")
        return snap, meta


def _remove_orphans_of(path: str | os.PathLike[str]) -> None:
    """Delete the temporary files that killed writes to ``path`` left beside it (a local
    path: on shared storage, whose a temporary file is cannot be told across machines).
    """
    if is_url(path):
        return
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    remove_orphan_temps(directory, target=name)


class SampleBuffer(SampleRingWriter):
    """Thread-safe columnar ring of training samples (C++), oldest rows overwritten when full.

    Parameters
    ----------
    feature_dim
        Length of every feature row.
    capacity
        Number of rows kept (the newest).
    label_dtype
        ``"int64"`` (classification) or ``"float32"`` (regression).

    Notes
    -----
    Every sample gets a global sequence number ``seq`` (0, 1, 2, ... in arrival order, never
    reused, kept across :meth:`clear` and :meth:`save`/:meth:`load`). ``push`` costs a few
    hundred nanoseconds and holds the GIL; ``extend``, ``snapshot`` and ``sample`` release it
    around their copies. A snapshot taken while other threads push sees whole rows only.
    """

    def __init__(self, feature_dim: int, capacity: int = 10_000, label_dtype: str = "int64") -> None:
        for name, value in (("feature_dim", feature_dim), ("capacity", capacity)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if label_dtype not in _LABEL_KINDS:
            raise ValueError(f"label_dtype={label_dtype!r} must be 'int64' or 'float32'")
        self._init(_core.SampleRing(int(feature_dim), int(capacity), _LABEL_KINDS[label_dtype]),
                   label_dtype)

    def _init(self, ring: Any, label_dtype: str) -> None:
        self._ring = ring
        self._label_dtype = label_dtype
        #: The schema metadata of the file :meth:`load` read (empty for a new buffer).
        self.saved_metadata: dict[str, str] = {}
        self._rng: np.random.Generator | None = None
        self._rng_lock = threading.Lock()
        self._attach(ring)

    def __len__(self) -> int:
        return len(self._ring)

    def __repr__(self) -> str:
        return (f"SampleBuffer(feature_dim={self.feature_dim}, capacity={self.capacity}, "
                f"label_dtype={self.label_dtype!r}, len={len(self)}, next_seq={self.next_seq})")

    @property
    def capacity(self) -> int:
        """Maximum number of rows kept."""
        return int(self._ring.capacity)

    @property
    def feature_dim(self) -> int:
        """Length of each feature row."""
        return int(self._ring.feature_dim)

    @property
    def label_dtype(self) -> str:
        """``"int64"`` or ``"float32"``."""
        return self._label_dtype

    @property
    def next_seq(self) -> int:
        """The seq the next pushed sample gets."""
        return int(self._ring.next_seq)

    @property
    def nbytes(self) -> int:
        """Bytes of memory the buffer holds (all columns at full capacity plus the object)."""
        return int(self._ring.nbytes)

    def clear(self) -> None:
        """Drop every row; the seq numbering continues."""
        self._ring.clear()

    def _snapshot(self, max_rows: int | None) -> tuple[Snapshot, int]:
        if max_rows is None:
            max_rows = self.capacity
        elif isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 0:
            raise ValueError(f"max_rows={max_rows!r} must be a non-negative integer or None")
        *columns, next_seq = self._ring.snapshot(int(max_rows))
        return Snapshot(*columns), int(next_seq)

    def snapshot(self, max_rows: int | None = None) -> Snapshot:
        """A consistent copy of the newest ``max_rows`` rows (all when None), oldest first."""
        return self._snapshot(max_rows)[0]

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> Snapshot:
        """``n`` rows drawn uniformly with replacement (in draw order, each with its seq).

        Parameters
        ----------
        n
            Number of rows.
        rng
            A NumPy Generator, a seed, or None for the buffer's own generator.

        Raises
        ------
        ValueError
            ``n`` is negative, or ``n > 0`` and the buffer is empty.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n={n!r} must be a non-negative integer")
        if isinstance(rng, np.random.Generator):
            u = rng.random(int(n))
        elif rng is None:
            with self._rng_lock:
                if self._rng is None:
                    self._rng = np.random.default_rng()
                u = self._rng.random(int(n))
        else:
            u = np.random.default_rng(rng).random(int(n))
        return Snapshot(*self._ring.sample_uniform(u))

    # ----------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None,
             metadata: dict[str, str] | None = None) -> int:
        """Write every row to an Arrow IPC file, atomically, and return the saved ``next_seq``.

        ``next_seq`` and ``capacity`` go into the schema metadata so :meth:`load` continues
        the numbering; ``metadata`` adds the caller's keys (in the same file, so they are
        written with the rows or not at all; :attr:`saved_metadata` after :meth:`load`).
        Temporary files that earlier saves to ``path`` left when they were killed are removed
        first. ``path`` may be an fsspec URL (see :meth:`Snapshot.write_ipc`).
        """
        _remove_orphans_of(path)
        snap, next_seq = self._snapshot(None)
        snap.write_ipc(path, {**(metadata or {}), "vortex.next_seq": str(next_seq),
                              "vortex.capacity": str(self.capacity)}, storage_options=storage_options)
        log.debug("saved %d samples to %s (next_seq=%d)", len(snap), path, next_seq)
        return next_seq

    def drop_older_than(self, seq: int) -> int:
        """Drop the rows numbered below ``seq`` (the numbering continues); returns how many.

        Not atomic with other threads' pushes (a row pushed meanwhile would be lost): call it
        from the buffer's only writer.
        """
        snap, next_seq = self._snapshot(None)
        keep = snap.seq >= seq
        dropped = len(snap) - int(keep.sum())
        if dropped:
            self._ring.replace(snap.features[keep], snap.labels[keep], snap.confidence[keep],
                               snap.error[keep], snap.timestamp[keep], snap.episode[keep], next_seq)
        return dropped

    @staticmethod
    def _read_saved(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
                    ) -> tuple[Snapshot, int, int | None, dict[str, str]]:
        snap, meta = Snapshot._read(path, storage_options)
        n = len(snap)

        def bad(problem: str) -> SnapshotFormatError:
            return SnapshotFormatError(path, problem, remedy=_REMEDY)

        try:
            next_seq = int(meta["vortex.next_seq"]) if "vortex.next_seq" in meta else (
                int(snap.seq[-1]) + 1 if n else 0)
            saved_capacity = int(meta["vortex.capacity"]) if "vortex.capacity" in meta else None
        except ValueError as exc:
            raise bad(f"bad next_seq/capacity metadata ({exc})") from exc
        if n and not np.array_equal(snap.seq, np.arange(next_seq - n, next_seq, dtype=np.int64)):
            raise bad(f"seq column is not the contiguous run ending at next_seq - 1 = "
                      f"{next_seq - 1} that a saved buffer has")
        if next_seq < n:
            raise bad(f"next_seq={next_seq} is smaller than the row count")
        if saved_capacity is not None and saved_capacity < 1:
            raise bad(f"capacity={saved_capacity} in the metadata")
        return snap, next_seq, saved_capacity, meta

    def _replace_from(self, snap: Snapshot, next_seq: int, path: str | os.PathLike[str]) -> None:
        keep = min(len(snap), self.capacity)
        start = len(snap) - keep
        try:
            self._ring.replace(snap.features[start:], snap.labels[start:], snap.confidence[start:],
                               snap.error[start:], snap.timestamp[start:], snap.episode[start:],
                               next_seq)
        except ValueError as exc:
            raise SnapshotFormatError(path, f"invalid sample values ({exc})", remedy=_REMEDY) from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str], capacity: int | None = None, *,
             storage_options: dict[str, Any] | None = None) -> SampleBuffer:
        """A new buffer holding the rows of a file written by :meth:`save`.

        Parameters
        ----------
        path
            The file, or an fsspec URL.
        capacity
            Capacity of the new buffer; None keeps the saved one. When smaller than the
            saved row count, the newest rows are kept.
        storage_options
            For a URL: options of its fsspec filesystem.

        Raises
        ------
        SnapshotFormatError
            The file is corrupted or not a saved buffer.
        """
        _remove_orphans_of(path)
        snap, next_seq, saved_capacity, meta = cls._read_saved(path, storage_options)
        if capacity is None:
            capacity = saved_capacity if saved_capacity is not None else max(len(snap), 10_000)
        buf = cls(snap.feature_dim, capacity, snap.label_dtype)
        buf._replace_from(snap, next_seq, path)
        buf.saved_metadata = meta
        log.debug("loaded %d samples from %s (next_seq=%d)", len(buf), path, next_seq)
        return buf

    def load_into(self, path: str | os.PathLike[str], *,
                  storage_options: dict[str, Any] | None = None) -> None:
        """Replace this buffer's rows with a saved file's (newest ``capacity`` of them) and
        continue its seq numbering.

        Raises
        ------
        SnapshotFormatError
            The file is corrupted, not a saved buffer, or its feature_dim / label_dtype differ
            from this buffer's. The buffer is then unchanged.
        """
        _remove_orphans_of(path)
        snap, next_seq, _, _ = self._read_saved(path, storage_options)
        if snap.feature_dim != self.feature_dim or snap.label_dtype != self.label_dtype:
            raise SnapshotFormatError(
                path, f"holds feature_dim={snap.feature_dim}, label_dtype={snap.label_dtype!r}; "
                f"this buffer has feature_dim={self.feature_dim}, label_dtype={self.label_dtype!r}",
                remedy="load it into a buffer of that shape, or move it aside")
        self._replace_from(snap, next_seq, path)
