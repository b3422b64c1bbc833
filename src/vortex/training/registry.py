"""Versioned model store: safetensors weights, an Arrow metadata table and a serving log.

Layout of a registry directory::

    <root>/versions.arrow          one row per version (Arrow IPC file + sha256 seal, see COLUMNS)
    <root>/serving_log.jsonl       one JSON line per swap / rollback (time, from, to, reason, crc32)
    <root>/v000007.safetensors     weights of version 7
    <root>/.lock                   advisory lock serialising writers across processes

The weights and the metadata table are replaced atomically (temp file in the same directory,
fsync, ``os.replace``, fsync of the directory), in an order that keeps the registry valid
after a crash at any moment: the weights file is complete before the row that lists it, and a
row is removed before its weights file.  Temporary files of writers killed mid-write are
deleted when a registry is opened (:func:`vortex._io.remove_orphan_temps`).

Nothing read from disk is believed unchecked.  ``versions.arrow`` ends with a sha256 seal of
its contents, verified before Arrow parses a byte of it (Arrow's reader trusts the offsets it
reads: one flipped bit could crash the process); a file written before the seal existed is
validated fully instead.  Each weights file is checked against the sha256 in its row before it
is loaded.  Each serving-log line carries the CRC-32 of its JSON, and names the version the
line before it made active.  Damage raises :class:`~vortex.errors.RegistryCorruptError` (or
:class:`~vortex.errors.ChecksumMismatchError` for weights) naming the file and what to do;
:func:`verify_registry` lists every problem without raising.

The serving log is the single source of truth of what served when: the active version is
the ``to_version`` of its last entry.  It is append-only, so a swap costs one small write
whatever the history's length: each entry is one line written by a single ``pwrite`` and
fdatasynced.  A writer killed mid-line leaves a last line without its newline that fails (or
lacks) its checksum: readers ignore it and the next append overwrites it, so a crash leaves
the log before or after the entry.  A last line whose checksum verifies but whose newline is
missing is a complete entry (the newline is the last byte of the same write, or was lost to
damage later): it is believed, and the next append adds the newline first.  A log cut short
at a line boundary reads as the log before the cut-off lines: an append-only log cannot tell
that from a crash before those appends (each append is fdatasynced before its swap is
acknowledged, so only a damaged disk can cut it).  Appends are optimistic
(:func:`vortex._io.append_if_unchanged`): a swap trusts what this process last read and takes
the lock, checks and writes in one call that releases the GIL once, so serving threads barely
notice it (the rewrite of a whole Arrow file it replaces added ~20 % to their p99 during a
burst of swaps).

The stored ``status`` column holds what the trainer decided ("candidate", "rejected");
:meth:`ModelRegistry.list_versions` reports ``"active"`` for the served version and
``"retired"`` for versions that served before.  Pinned versions (:meth:`ModelRegistry.pin`)
are never removed by :meth:`ModelRegistry.cleanup`, and neither are the active version and
the one it replaced (the version a rollback returns to).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import weakref
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from .._io import (
    MISSING,
    FileKey,
    append_if_unchanged,
    atomic_write_bytes,
    atomic_write_sealed,
    file_key,
    fsync_dir,
    is_arrow_ipc_file,
    read_sealed,
    remove_orphan_temps,
)
from ..errors import (
    ChecksumMismatchError,
    CorruptFileError,
    RegistryCorruptError,
    RegistryError,
    VersionNotFoundError,
)

__all__ = ["COLUMNS", "LOG_COLUMNS", "ModelRegistry", "state_dict_bytes", "verify_registry"]

log = logging.getLogger(__name__)

#: Columns of the metadata table, in order.
COLUMNS: tuple[str, ...] = (
    "version", "parent", "created_at", "trigger", "samples", "epochs", "train_loss",
    "val_loss", "val_accuracy", "improvement_pct", "ci_low", "ci_high", "sha256", "status",
)
#: Columns of the serving log.
LOG_COLUMNS: tuple[str, ...] = ("time", "from_version", "to_version", "reason")

# Metadata columns a caller of register() may set, by the type they hold.
_INT_COLUMNS = ("parent", "samples", "epochs")
_STORED_STATUSES = ("candidate", "rejected")

_WEIGHTS_RE = re.compile(r"^v(\d{6,})\.safetensors$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_META_NAME = "versions.arrow"
_LOG_NAME = "serving_log.jsonl"
#: The serving log's earlier format (an Arrow IPC file rewritten on every swap); read when
#: there is no JSON log yet, folded into it by the first swap, then removed.
_LEGACY_LOG_NAME = "serving_log.arrow"

# A checksummed serving-log line is its entry's JSON with this field added last.
_LOG_CRC = re.compile(rb',"crc32":"([0-9a-f]{8})"\}')
_LOG_LINE_START = b'{"time":'
_META_REMEDY = "restore it from a backup (the registry cannot be opened until then)"


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("version", pa.int64()), ("parent", pa.int64()), ("created_at", pa.float64()),
        ("trigger", pa.string()), ("samples", pa.int64()), ("epochs", pa.int64()),
        ("train_loss", pa.float64()), ("val_loss", pa.float64()),
        ("val_accuracy", pa.float64()), ("improvement_pct", pa.float64()),
        ("ci_low", pa.float64()), ("ci_high", pa.float64()),
        ("sha256", pa.string()), ("status", pa.string()),
    ])


def _log_schema():
    import pyarrow as pa

    return pa.schema([("time", pa.float64()), ("from_version", pa.int64()),
                      ("to_version", pa.int64()), ("reason", pa.string())])


def _log_entry(entries: list[dict[str, Any]], version: int, reason: str,
               at: float | None) -> dict[str, Any]:
    """The serving-log entry that makes ``version`` active after ``entries``."""
    return {"time": float(time.time() if at is None else at),
            "from_version": entries[-1]["to_version"] if entries else None,
            "to_version": version, "reason": reason}


def _log_line(entry: Mapping[str, Any]) -> bytes:
    """One serving-log line: the entry's JSON with the CRC-32 of that JSON as a last field."""
    body = json.dumps({k: entry[k] for k in LOG_COLUMNS}, separators=(",", ":"),
                      allow_nan=False).encode()
    return body[:-1] + b',"crc32":"%08x"}\n' % zlib.crc32(body)


def _log_corrupt(path: str, number: int, offset: int, problem: str) -> RegistryCorruptError:
    return RegistryCorruptError(
        path, f"line {number} {problem}", position=offset,
        remedy=(f"restore the file from a backup, or keep only its first {number - 1} lines "
                f"(the registry then serves what it served before line {number}) and check "
                f"with `vortex models log`"))


def _parse_log_line(line: bytes, path: str, number: int, offset: int,
                    checked: bool) -> tuple[dict[str, Any], bool]:
    """The entry of one complete line and whether it carried a checksum.

    ``checked``: an earlier line had one, so this one must too (every writer since the first
    checksummed line wrote them; only logs written before checksums existed lack them).
    """
    m = _LOG_CRC.search(line)
    has_crc = m is not None and m.end() == len(line)
    if m is not None and has_crc:
        body = line[:m.start()] + b"}"
        if zlib.crc32(body) != int(m[1], 16):
            raise _log_corrupt(path, number, offset, "fails its checksum")
    elif checked or m is not None:
        raise _log_corrupt(path, number, offset, "has no valid checksum, unlike the lines before it"
                           if checked else "is damaged")
    else:
        body = line
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise _log_corrupt(path, number, offset, f"is not JSON ({exc})") from exc
    if not _is_entry(raw):
        raise _log_corrupt(path, number, offset, f"is not a serving-log entry: {line[:120]!r}")
    return {**raw, "time": float(raw["time"])}, has_crc


def _is_entry(raw: Any) -> bool:
    """True if ``raw`` (parsed JSON) has exactly the fields and types of a serving-log entry."""
    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return (isinstance(raw, dict) and raw.keys() == set(LOG_COLUMNS)
            and (integer(raw["time"]) or isinstance(raw["time"], float)) and math.isfinite(raw["time"])
            and (raw["from_version"] is None or integer(raw["from_version"]))
            and integer(raw["to_version"]) and isinstance(raw["reason"], str))


def _parse_log(data: bytes, path: str) -> tuple[list[dict[str, Any]], int, bytes, bool]:
    """The entries of serving-log bytes, where the next append goes, what it must start with
    (a newline if the last entry lost its own) and whether a torn last line was ignored.

    Raises :class:`RegistryCorruptError` for a damaged line.
    """
    entries: list[dict[str, Any]] = []
    checked = False
    offset = 0
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line without its newline
    m = _LOG_CRC.search(tail)
    whole = m is not None and m.end() == len(tail)
    if whole:  # a whole checksummed entry whose newline alone is missing: parsed as a line
        lines.append(tail)
    for number, line in enumerate(lines, 1):
        entry, has_crc = _parse_log_line(line, path, number, offset, checked)
        if has_crc and entries and entry["from_version"] != entries[-1]["to_version"]:
            raise _log_corrupt(path, number, offset,
                               f"says version {entry['from_version']} was active before it, but "
                               f"line {number - 1} made version {entries[-1]['to_version']} "
                               "active: a line is missing or damaged")
        checked |= has_crc
        entries.append(entry)
        offset += len(line) + 1
    if whole:
        return entries, len(data), b"\n", False  # the next append restores the newline first
    if not tail:
        return entries, offset, b"", False
    # A writer killed mid-line leaves a prefix of a line: no checksum field yet, and it starts
    # like every line. Anything else in the tail is damage, not a torn write.
    if m is not None or not (tail.startswith(_LOG_LINE_START) or _LOG_LINE_START.startswith(tail)):
        raise _log_corrupt(path, len(lines) + 1, offset, f"is damaged: {tail[:120]!r}")
    return entries, offset, b"", True


def state_dict_bytes(state: Any) -> bytes:
    """Serialise a module, a torch state dict or a dict of NumPy arrays to safetensors bytes."""
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"model state must be a non-empty mapping of tensors, got {type(state).__name__}")
    first = next(iter(state.values()))
    if type(first).__module__.startswith("torch"):
        from safetensors.torch import save

        return save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    import numpy as np
    from safetensors.numpy import save as save_numpy

    return save_numpy({k: np.ascontiguousarray(v) for k, v in state.items()})


def _checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``register``'s metadata with each value checked against its column's type, before
    anything is written (ValueError naming the column and the value; a refusal leaves no file).
    A non-finite metric is stored as null; the status defaults to "candidate".
    """
    from .._scalars import as_index, as_real

    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValueError(f"metadata={metadata!r}: must be a mapping of column names to values")
    meta = dict(metadata or {})
    unknown = [k for k in meta if k not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown metadata columns {sorted(map(str, unknown))}; known: {COLUMNS}")
    for key, value in meta.items():
        name = f"metadata[{key!r}]"
        if key in ("version", "sha256"):
            raise ValueError(f"{name} is set by the registry, got {value!r}")
        if value is None:
            continue
        if key in _INT_COLUMNS:
            meta[key] = as_index(value, name, 0)
        elif key in ("trigger", "status"):
            if not isinstance(value, str) or not _encodable(value):
                raise ValueError(f"{name}={value!r}: must be a (UTF-8 encodable) string")
        else:  # float columns; a non-finite metric is stored as null, a time must be finite
            real = as_real(value, name)
            if key == "created_at" and not math.isfinite(real):
                raise ValueError(f"{name}={value!r}: must be a finite unix time")
            meta[key] = real if math.isfinite(real) else None
    status = meta.get("status") or "candidate"
    if status not in _STORED_STATUSES:
        raise ValueError(f"metadata['status']={status!r}: must be 'candidate' or 'rejected' "
                         f"('active' and 'retired' follow from the serving log: use set_active)")
    meta["status"] = status
    return meta


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _write_table(path: str, table) -> None:
    import pyarrow as pa

    # Serialised in memory first so the file is written by one native call (see
    # vortex._io.atomic_write_bytes), without a copy of the buffer.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    atomic_write_sealed(path, sink.getvalue())


def _read_table(path: str, schema):
    """The table in ``path``: seal verified (or, unsealed, the whole table validated) first."""
    import pyarrow as pa

    try:
        body, _ = read_sealed(path, RegistryCorruptError, unsealed=is_arrow_ipc_file,
                              remedy=_META_REMEDY)
    except FileNotFoundError:
        return schema.empty_table()
    try:
        table = pa.ipc.open_file(pa.py_buffer(body)).read_all()
        table.validate(full=True)
    except Exception as exc:  # any failure to parse is damage: Arrow raises many kinds
        raise RegistryCorruptError(path, f"not a readable Arrow IPC file ({type(exc).__name__}: "
                                   f"{exc})", remedy=_META_REMEDY) from exc
    if not table.schema.equals(schema):
        raise RegistryCorruptError(path, f"has schema {table.schema}, expected {schema}",
                                   remedy=_META_REMEDY)
    return table


def _check_rows(path: str, rows: list[dict[str, Any]], pinned: Any) -> None:
    """Reject a metadata table no registry writes (defence for files without a seal)."""
    previous = 0
    for i, row in enumerate(rows):
        bad = None
        if row["version"] is None or row["version"] <= previous:
            bad = f"version {row['version']} does not follow {previous}"
        elif not isinstance(row["sha256"], str) or not _SHA256_RE.match(row["sha256"]):
            bad = f"sha256 {row['sha256']!r} is not a sha256"
        elif row["status"] not in _STORED_STATUSES:
            bad = f"status {row['status']!r}"
        elif row["created_at"] is None or not math.isfinite(row["created_at"]):
            bad = f"created_at {row['created_at']!r}"
        if bad:
            raise RegistryCorruptError(path, f"row {i} holds what no registry writes: {bad}",
                                       remedy=_META_REMEDY)
        previous = row["version"]
    if not (isinstance(pinned, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                             for v in pinned)):
        raise RegistryCorruptError(path, f"pinned versions {pinned!r} are not a list of numbers",
                                   remedy=_META_REMEDY)


class ModelRegistry:
    """Model versions under ``root``: weights (safetensors) + metadata (Arrow) + serving log.

    Thread-safe, and several processes may share one root (writers take a file lock).

    Parameters
    ----------
    root
        Directory of the registry; created if missing.

    Raises
    ------
    RegistryCorruptError
        ``versions.arrow`` or ``serving_log.jsonl`` is damaged (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)
        self._meta_path = os.path.join(self.root, _META_NAME)
        self._log_path = os.path.join(self.root, _LOG_NAME)
        self._lock = threading.RLock()
        # metadata table as last read: (file key, (table, rows, pinned versions))
        self._meta: tuple[FileKey, tuple[Any, list[dict[str, Any]], frozenset[int]]] | None = None
        # serving log as last read: (file key, entries, offset of the next append, its prefix)
        self._log: tuple[FileKey, list[dict[str, Any]], int, bytes] | None = None
        self._torn_seen: tuple[FileKey, int] | None = None
        self._lock_file: int | None = None
        self._lock_owner: int | None = None
        removed = remove_orphan_temps(self.root)
        if removed:
            log.info("registry %s: removed %d temporary files of killed writes", self.root, len(removed))
        self._rows()  # fail now if the registry is unreadable
        self._log_rows()

    # ------------------------------------------------------------------ reading
    def _meta_state(self, fresh: bool = True) -> tuple[FileKey, list[dict[str, Any]], frozenset[int]]:
        """Key, rows and pinned versions of the metadata table; as last read unless ``fresh``.

        The file is re-read only when its key changed (taken before reading: a change after it
        shows as a new key next time).
        """
        if self._meta is not None and not fresh:
            key, (_, rows, pins) = self._meta
            return key, rows, pins
        key = file_key(self._meta_path)
        if self._meta is None or self._meta[0] != key:
            table = _read_table(self._meta_path, _schema())
            rows = table.to_pylist()
            raw_pins = (table.schema.metadata or {}).get(b"pinned", b"[]")
            try:
                pinned = json.loads(raw_pins)
            except ValueError:
                pinned = raw_pins
            _check_rows(self._meta_path, rows, pinned)
            self._meta = (key, (table, rows, frozenset(pinned)))
        key, (_, rows, pins) = self._meta
        return key, rows, pins

    def _rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._meta_state()[1]]

    def _log_state(self, fresh: bool = True) -> tuple[FileKey, list[dict[str, Any]], int, bytes]:
        """Key, entries, next append offset and prefix of the serving log; as last read unless ``fresh``."""
        if self._log is not None and not fresh:
            return self._log
        key = file_key(self._log_path)
        if self._log is not None and self._log[0] == key:
            return self._log
        if key == MISSING:
            legacy = _read_table(os.path.join(self.root, _LEGACY_LOG_NAME), _log_schema())
            entries, end, sep, torn = legacy.to_pylist(), 0, b"", False
        else:
            with open(self._log_path, "rb") as f:
                entries, end, sep, torn = _parse_log(f.read(), self._log_path)
        if torn and self._torn_seen != (key, end):
            self._torn_seen = (key, end)
            log.warning("%s: ignoring an incomplete last line at byte %d (a writer was killed "
                        "mid-append; that swap never happened); the next swap overwrites it",
                        self._log_path, end)
        self._log = (key, entries, end, sep)
        return self._log

    def _log_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._log_state()[1]

    def serving_log(self) -> list[dict[str, Any]]:
        """Every swap and rollback, oldest first: dicts with time, from_version, to_version, reason."""
        return [dict(e) for e in self._log_rows()]

    @property
    def active_version(self) -> int | None:
        """The version being served (last serving-log entry), or None before the first."""
        entries = self._log_rows()
        return entries[-1]["to_version"] if entries else None

    def pinned(self) -> list[int]:
        """The pinned versions, ascending (see :meth:`pin`)."""
        with self._lock:
            return sorted(self._meta_state()[2])

    def _derive(self, row: dict[str, Any], active: int | None, served: set[int],
                pins: frozenset[int]) -> dict[str, Any]:
        if row["version"] == active:
            row["status"] = "active"
        elif row["status"] != "rejected" and row["version"] in served:
            row["status"] = "retired"
        row["pinned"] = row["version"] in pins
        return row

    def version_at(self, t: float) -> int | None:
        """The version that was serving at unix time ``t`` (None if none was yet)."""
        served = None
        for entry in self._log_rows():
            if entry["time"] > t:
                break
            served = entry["to_version"]
        return served

    def list_versions(self) -> list[dict[str, Any]]:
        """Metadata of every stored version, oldest first.

        Each row holds the :data:`COLUMNS` (``status`` "active" for the served version,
        "retired" for versions that served before) and ``pinned`` (bool).
        """
        with self._lock:
            _, rows, pins = self._meta_state()
            entries = self._log_rows()
        served = {e["to_version"] for e in entries}
        active = entries[-1]["to_version"] if entries else None
        return [self._derive(dict(row), active, served, pins) for row in rows]

    def versions(self) -> list[int]:
        """Version numbers, oldest first."""
        return [row["version"] for row in self._rows()]

    def _row(self, version: int) -> dict[str, Any]:
        """Stored metadata row of ``version`` (status as stored)."""
        with self._lock:
            rows = self._meta_state()[1]
        for row in reversed(rows):  # the newest versions are the ones asked for most
            if row["version"] == version:
                return dict(row)
        raise VersionNotFoundError(f"model version {version} is not in the registry {self.root} "
                                   f"(stored: {[r['version'] for r in rows]})")

    def get(self, version: int) -> dict[str, Any]:
        """Metadata row of ``version`` (as in :meth:`list_versions`); :class:`VersionNotFoundError`
        if it is not stored.
        """
        row = self._row(version)
        entries = self._log_rows()
        active = entries[-1]["to_version"] if entries else None
        with self._lock:
            pins = self._meta_state(fresh=False)[2]
        return self._derive(row, active, {e["to_version"] for e in entries}, pins)

    def weights_path(self, version: int) -> str:
        """Path of the safetensors file of ``version``."""
        return os.path.join(self.root, f"v{int(version):06d}.safetensors")

    def load_bytes(self, version: int) -> bytes:
        """The verified safetensors bytes of ``version``."""
        return self.load_verified(version)[0]

    def load_verified(self, version: int) -> tuple[bytes, str]:
        """The safetensors bytes of ``version`` and their sha256, verified against the record.

        Raises
        ------
        VersionNotFoundError
            The version is not stored.
        ChecksumMismatchError
            The weights file is missing or does not match its recorded sha256.
        """
        row = self._row(version)
        path = self.weights_path(version)
        remedy = (f"restore the file from a backup, or remove version {version} "
                  f"(`vortex models verify` lists every damaged version)")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise ChecksumMismatchError(path, f"weights of model version {version} are missing "
                                        f"(the registry lists sha256 {row['sha256']})",
                                        remedy=remedy) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != row["sha256"]:
            raise ChecksumMismatchError(
                path, f"weights of model version {version} have sha256 {digest}, the registry "
                f"recorded {row['sha256']}: the file is corrupted or was replaced; not loading it",
                remedy=remedy)
        return data, digest

    def load(self, version: int | None = None) -> dict[str, Any]:
        """The state dict (torch tensors) of ``version`` (default: the active one), checksum-verified.

        Raises
        ------
        VersionNotFoundError
            The version is not stored (or there is no active version).
        ChecksumMismatchError
            The weights file does not match the sha256 recorded when it was registered.
        """
        from safetensors.torch import load

        if version is None:
            version = self.active_version
            if version is None:
                raise VersionNotFoundError(f"registry {self.root} has no active version")
        return load(self.load_bytes(version))

    def verify(self, version: int) -> None:
        """Raise :class:`ChecksumMismatchError` unless ``version``'s weights match their sha256."""
        self.load_bytes(version)

    # ------------------------------------------------------------------ writing
    def _lock_fd(self) -> int:
        """The descriptor this process holds of the writers' lock file, opened once.

        Re-opened in a forked child: an ``flock`` belongs to the open file, which a fork
        shares, so a child locking its inherited descriptor would not exclude its parent.
        """
        if self._lock_owner != os.getpid() or self._lock_file is None:
            fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            weakref.finalize(self, os.close, fd)
            self._lock_file, self._lock_owner = fd, os.getpid()
            return fd
        return self._lock_file

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock:
            fd = self._lock_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _next_version(self) -> int:
        """The number the next registered version gets (numbers are never reused)."""
        table = self._meta[1][0] if self._meta is not None else _schema().empty_table()
        stored = int((table.schema.metadata or {}).get(b"next_version", b"1"))
        used = [r["version"] for r in self._rows()] + [e["to_version"] for e in self.serving_log()]
        return max([*used, self._max_file_version(), stored - 1], default=0) + 1

    def _write_rows(self, rows: list[dict[str, Any]], next_version: int | None = None,
                    pinned: set[int] | frozenset[int] | None = None) -> None:
        """Replace the metadata table (under the writers' lock, after a fresh read)."""
        import pyarrow as pa

        if next_version is None:
            next_version = self._next_version()
        if pinned is None:
            pinned = self._meta_state(fresh=False)[2]
        listed = {r["version"] for r in rows}
        schema = _schema().with_metadata({"next_version": str(next_version),
                                          "pinned": json.dumps(sorted(set(pinned) & listed))})
        table = pa.Table.from_pylist(rows, schema=schema)
        _write_table(self._meta_path, table)
        self._meta = (file_key(self._meta_path), (table, table.to_pylist(), frozenset(pinned) & listed))

    def register(self, state: Any, metadata: Mapping[str, Any] | None = None) -> int:
        """Store a new version and return its number.

        Parameters
        ----------
        state
            A ``torch.nn.Module``, a torch state dict, a dict of NumPy arrays, or the bytes of a
            safetensors file.
        metadata
            Values of the metadata columns (``parent``, ``trigger``, ``samples``, ``epochs``,
            ``train_loss``, ``val_loss``, ``val_accuracy``, ``improvement_pct``, ``ci_low``,
            ``ci_high``, ``created_at``, ``status``); missing ones are null.  ``version`` and
            ``sha256`` are set by the registry.

        Raises
        ------
        ValueError
            A metadata field is unknown or holds a value of the wrong type (the message names
            it); nothing is written.
        """
        meta = _checked_metadata(metadata)
        data = bytes(state) if isinstance(state, (bytes, bytearray, memoryview)) else state_dict_bytes(state)
        with self._writing():
            rows = self._rows()
            version = self._next_version()
            row: dict[str, Any] = dict.fromkeys(COLUMNS)
            row.update(meta)
            row.update(version=version, created_at=meta.get("created_at") or time.time(),
                       sha256=hashlib.sha256(data).hexdigest())
            path = self.weights_path(version)
            atomic_write_bytes(path, data)
            try:
                self._write_rows([*rows, row], version + 1)
            except BaseException:  # the weights file must not outlive a row that was never listed
                self._unlink(path)
                raise
        log.info("registered model version %d (%s, sha256 %s)", version, row["status"], row["sha256"][:12])
        return version

    def _max_file_version(self) -> int:
        best = 0
        for name in os.listdir(self.root):
            m = _WEIGHTS_RE.match(name)
            if m:
                best = max(best, int(m.group(1)))
        return best

    def set_status(self, version: int, status: str) -> None:
        """Change the stored status of ``version`` ("candidate" or "rejected")."""
        if status not in _STORED_STATUSES:
            raise ValueError(f"status={status!r}: must be 'candidate' or 'rejected'")
        with self._writing():
            rows = self._rows()
            for row in rows:
                if row["version"] == version:
                    row["status"] = status
                    break
            else:
                raise VersionNotFoundError(f"model version {version} is not in the registry {self.root}")
            self._write_rows(rows)

    def pin(self, version: int) -> None:
        """Keep ``version`` whatever :meth:`cleanup` is asked (persisted; idempotent).

        Raises :class:`VersionNotFoundError` if it is not stored.
        """
        self._set_pinned(version, True)

    def unpin(self, version: int) -> None:
        """Let :meth:`cleanup` remove ``version`` again (idempotent; no error if not pinned)."""
        self._set_pinned(version, False)

    def _set_pinned(self, version: int, pinned: bool) -> None:
        from .._scalars import as_index

        version = as_index(version, "version", 1)
        with self._writing():
            rows = self._rows()
            pins = set(self._meta_state(fresh=False)[2])
            if pinned and version not in {r["version"] for r in rows}:
                raise VersionNotFoundError(f"model version {version} is not in the registry {self.root}")
            if (version in pins) == pinned:
                return
            pins.symmetric_difference_update({version})
            self._write_rows(rows, pinned=pins)
        log.info("model version %d %s", version, "pinned" if pinned else "unpinned")

    def set_active(self, version: int, reason: str = "manual", *, at: float | None = None,
                   verify: bool = True, expect_active: int | object | None = ...) -> bool:
        """Make ``version`` the served one and append the change to the serving log.

        The weights are verified first (unless the caller just did, ``verify=False``): a
        version whose checksum does not match is never made active
        (:class:`ChecksumMismatchError`).

        With ``expect_active``, the change is made only if that version (None: none) is the
        active one at the moment of the append, checked under the writers' lock: a
        compare-and-swap, so a decision taken against one active version never overrides a
        swap another process made meanwhile. Returns False (nothing written) when it is not;
        True when the entry was appended.
        """
        if not isinstance(reason, str) or not reason or not _encodable(reason):
            raise ValueError(f"reason={reason!r}: must be a non-empty string")
        version = int(version)
        with self._lock:
            if verify:
                self.verify(version)
            # First on what this process last read (the usual case: it is the only writer);
            # if another process changed either file meanwhile, re-read and try again.
            fresh = False
            while True:
                meta_key, rows, _ = self._meta_state(fresh)
                log_key, entries, end, sep = self._log_state(fresh)
                current = entries[-1]["to_version"] if entries else None
                if expect_active is not ... and current != expect_active:
                    if fresh:
                        log.info("model version %d not activated: version %s is active, not %s",
                                 version, current, expect_active)
                        return False
                elif not any(row["version"] == version for row in rows):
                    if fresh:
                        raise VersionNotFoundError(f"model version {version} is not in the "
                                                   f"registry {self.root} (stored: {self.versions()})")
                elif log_key == MISSING:
                    entry = self._start_log(version, reason, at, expect_active)
                    if entry is False:
                        return False
                    if entry is not None:
                        break
                else:
                    entry = _log_entry(entries, version, reason, at)
                    key = append_if_unchanged(self._lock_fd(), self._log_path, end,
                                              sep + _log_line(entry),
                                              [(self._meta_path, meta_key), (self._log_path, log_key)])
                    if key is not None:
                        entries.append(entry)  # in place: a swap stays O(1) however long the log
                        self._log = (key, entries, key[2], b"")
                        break
                fresh = True
        log.info("model version %s -> %d (%s)", entry["from_version"], version, reason)
        return True

    def _start_log(self, version: int, reason: str, at: float | None,
                   expect_active: Any) -> dict[str, Any] | Literal[False] | None:
        """Create the serving log with its first entry (after any legacy entries); return it.

        None if another process created the log first (the caller then appends instead);
        False if ``expect_active`` is given and not the active version.
        """
        with self._writing():
            _, rows, _ = self._meta_state()
            key, entries, _, _ = self._log_state()
            if key != MISSING:
                return None
            current = entries[-1]["to_version"] if entries else None
            if expect_active is not ... and current != expect_active:
                return False
            if not any(row["version"] == version for row in rows):
                raise VersionNotFoundError(f"model version {version} is not in the registry {self.root}")
            entries = [*entries, _log_entry(entries, version, reason, at)]
            data = b"".join(_log_line(e) for e in entries)
            atomic_write_bytes(self._log_path, data)
            self._log = (file_key(self._log_path), entries, len(data), b"")
            self._unlink(os.path.join(self.root, _LEGACY_LOG_NAME))
        return entries[-1]

    def _protected(self) -> set[int]:
        """Versions cleanup never removes: the active one, the one it replaced, pinned ones."""
        entries = self._log_state()[1]
        keep = set(self._meta_state(fresh=False)[2])
        if entries:
            keep |= {entries[-1]["to_version"], entries[-1]["from_version"]}
        return keep

    def remove(self, version: int) -> None:
        """Delete ``version`` (row first, then its weights).

        The active version and pinned versions cannot be removed (:class:`RegistryError`).
        """
        with self._writing():
            if version == self.active_version:
                raise RegistryError(f"model version {version} is active and cannot be removed")
            if version in self._meta_state()[2]:
                raise RegistryError(f"model version {version} is pinned: unpin it first")
            rows = self._rows()
            kept = [r for r in rows if r["version"] != version]
            if len(kept) == len(rows):
                raise VersionNotFoundError(f"model version {version} is not in the registry {self.root}")
            self._write_rows(kept)
            self._unlink(self.weights_path(version))

    def _unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        fsync_dir(self.root)

    def cleanup(self, keep_last_n: int, max_age_days: float | None = None,
                *, now: float | None = None) -> list[int]:
        """Remove old versions and return their numbers.

        Keeps the ``keep_last_n`` newest versions and removes versions older than
        ``max_age_days`` even among those; never removes the active version, the version it
        replaced (where a rollback returns to) or a pinned one.  Weights files left behind by a
        crash between writing weights and listing them are deleted too, and so are temporary
        files of killed writers.
        """
        if isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 0:
            raise ValueError(f"keep_last_n={keep_last_n!r}: must be an integer >= 0")
        if max_age_days is not None:
            from .._scalars import as_real

            rule = "must be a number > 0 or None"
            if not 0 < as_real(max_age_days, "max_age_days", rule) < math.inf:
                raise ValueError(f"max_age_days={max_age_days!r}: {rule}")
        now = time.time() if now is None else now
        with self._writing():
            rows = self._rows()
            protected = self._protected()
            keep_newest = {r["version"] for r in rows[max(0, len(rows) - keep_last_n):]}
            removed = []
            for row in rows:
                v = row["version"]
                too_old = max_age_days is not None and now - row["created_at"] > max_age_days * 86400
                if v not in protected and (v not in keep_newest or too_old):
                    removed.append(v)
            if removed:
                self._write_rows([r for r in rows if r["version"] not in removed])
            listed = {r["version"] for r in rows} - set(removed)
            for name in os.listdir(self.root):
                m = _WEIGHTS_RE.match(name)
                if ((m and int(m.group(1)) not in listed) or name.startswith(".tmp-")
                        or (name == _LEGACY_LOG_NAME and os.path.exists(self._log_path))):
                    self._unlink(os.path.join(self.root, name))
            remove_orphan_temps(self.root)
        if removed:
            log.info("registry cleanup removed versions %s", removed)
        return removed


def verify_registry(root: str | os.PathLike) -> list[CorruptFileError]:
    """Every damaged file of the registry at ``root``, without raising; empty when all is sound.

    Checks ``versions.arrow`` (seal, Arrow validity, rows), ``serving_log.jsonl`` (each line's
    checksum and the chain of versions) and every listed version's weights (sha256). Each
    problem is a :class:`~vortex.errors.CorruptFileError` naming the file and what to do.
    """
    root = os.path.abspath(os.fspath(root))
    problems: list[CorruptFileError] = []
    meta_path, log_path = os.path.join(root, _META_NAME), os.path.join(root, _LOG_NAME)
    rows: list[dict[str, Any]] = []
    try:
        rows = _read_table(meta_path, _schema()).to_pylist()
    except CorruptFileError as exc:
        problems.append(exc)
    try:
        with open(log_path, "rb") as f:
            _parse_log(f.read(), log_path)
    except FileNotFoundError:
        pass
    except CorruptFileError as exc:
        problems.append(exc)
    if problems:
        return problems
    reg = ModelRegistry(root)
    for row in rows:
        try:
            reg.verify(row["version"])
        except ChecksumMismatchError as exc:
            problems.append(exc)
    return problems
