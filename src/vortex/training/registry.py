"""Versioned model store: safetensors weights, an Arrow metadata table and a serving log.

Layout of a registry directory::

    <root>/versions.arrow          one row per version (Arrow IPC file, see COLUMNS)
    <root>/serving_log.jsonl       one JSON line per swap / rollback (time, from, to, reason)
    <root>/v000007.safetensors     weights of version 7
    <root>/.lock                   advisory lock serialising writers across processes

The weights and the metadata table are replaced atomically (temp file in the same directory,
fsync, ``os.replace``, fsync of the directory), in an order that keeps the registry valid
after a crash at any moment: the weights file is complete before the row that lists it, and a
row is removed before its weights file.

The serving log is the single source of truth of what served when: the active version is
the ``to_version`` of its last entry.  It is append-only, so a swap costs one small write
whatever the history's length: each entry is one line written by a single ``pwrite`` and
fdatasynced.  A writer killed mid-line leaves a last line without its newline; readers ignore
it and the next append overwrites it, so a crash leaves the log before or after the entry.
Appends are optimistic (:func:`vortex._io.append_if_unchanged`): a swap trusts what this
process last read and takes the lock, checks and writes in one call that releases the GIL
once, so serving threads barely notice it (the rewrite of a whole Arrow file it replaces
added ~20 % to their p99 during a burst of swaps).

The stored ``status`` column holds what the trainer decided ("candidate", "rejected");
:meth:`ModelRegistry.list_versions` reports ``"active"`` for the served version and
``"retired"`` for versions that served before.
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..errors import ChecksumMismatchError, RegistryError, VersionNotFoundError
from .._io import (MISSING, FileKey, append_if_unchanged, atomic_write_bytes, file_key,
                   fsync_dir, is_temp_name)

__all__ = ["ModelRegistry", "COLUMNS", "LOG_COLUMNS", "state_dict_bytes"]

log = logging.getLogger(__name__)

#: Columns of the metadata table, in order.
COLUMNS: tuple[str, ...] = (
    "version", "parent", "created_at", "trigger", "samples", "epochs", "train_loss",
    "val_loss", "val_accuracy", "improvement_pct", "ci_low", "ci_high", "sha256", "status",
)
#: Columns of the serving log.
LOG_COLUMNS: tuple[str, ...] = ("time", "from_version", "to_version", "reason")

_WEIGHTS_RE = re.compile(r"^v(\d{6,})\.safetensors$")
_LOG_NAME = "serving_log.jsonl"
#: The serving log's earlier format (an Arrow IPC file rewritten on every swap); read when
#: there is no JSON log yet, folded into it by the first swap, then removed.
_LEGACY_LOG_NAME = "serving_log.arrow"


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


def _checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``register``'s metadata with each value checked against its column's type (ValueError
    naming the column and the value)."""
    from .._scalars import as_index, as_real

    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValueError(f"metadata={metadata!r}: must be a mapping of column names to values")
    meta = dict(metadata or {})
    unknown = set(meta) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown metadata columns {sorted(unknown)}; known: {COLUMNS}")
    for key, value in meta.items():
        name = f"metadata[{key!r}]"
        if key in ("version", "sha256"):
            raise ValueError(f"{name} is set by the registry, got {value!r}")
        if value is None:
            continue
        if key in ("parent", "samples", "epochs"):
            meta[key] = as_index(value, name, 0)
        elif key in ("trigger", "status"):
            if not isinstance(value, str):
                raise ValueError(f"{name}={value!r}: must be a string")
        else:  # float columns; a non-finite metric is stored as null, a time must be finite
            meta[key] = as_real(value, name)
            if key == "created_at" and not math.isfinite(meta[key]):
                raise ValueError(f"{name}={value!r}: must be a finite unix time")
    return meta


def _log_line(entry: Mapping[str, Any]) -> bytes:
    return (json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n").encode()


def _parse_log(data: bytes, path: str) -> tuple[list[dict[str, Any]], int]:
    """The entries of serving-log bytes and the offset where its complete lines end.

    Past that offset is a line torn by a killed writer: ignored here, overwritten by the next
    append.  A complete line that does not parse is corruption: :class:`RegistryError`.
    """
    end = data.rfind(b"\n") + 1
    entries = []
    for number, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        try:
            raw = json.loads(line)
            previous = raw["from_version"]
            entries.append({"time": float(raw["time"]),
                            "from_version": None if previous is None else int(previous),
                            "to_version": int(raw["to_version"]), "reason": str(raw["reason"])})
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"serving log {path} line {number} is corrupt ({exc!r}): "
                                f"{line[:120]!r}") from exc
    return entries, end


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
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in state.items()})


def _write_table(path: str, table) -> None:
    import pyarrow as pa

    # Serialised in memory first so the file is written by one native call (see
    # vortex._io.atomic_write_bytes): this runs on every swap, next to the serving threads.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _read_table(path: str, schema):
    import pyarrow as pa

    if not os.path.exists(path):
        return schema.empty_table()
    try:
        with pa.OSFile(path, "rb") as f:
            table = pa.ipc.open_file(f).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise RegistryError(f"registry file {path} is unreadable: {exc}") from exc
    if not table.schema.equals(schema):
        raise RegistryError(f"registry file {path} has schema {table.schema}, expected {schema}")
    return table


class ModelRegistry:
    """Model versions under ``root``: weights (safetensors) + metadata (Arrow) + serving log.

    Thread-safe, and several processes may share one root (writers take a file lock).

    Parameters
    ----------
    root
        Directory of the registry; created if missing.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)
        self._meta_path = os.path.join(self.root, "versions.arrow")
        self._log_path = os.path.join(self.root, _LOG_NAME)
        self._lock = threading.RLock()
        self._cache: dict[str, tuple[FileKey, Any]] = {}
        # serving log as last read: (file key, entries, end offset of its complete lines)
        self._log: tuple[FileKey, list[dict[str, Any]], int] | None = None
        self._lock_file: int | None = None
        self._lock_owner: int | None = None
        self._rows()  # fail now if the registry is unreadable
        self._log_rows()

    # ------------------------------------------------------------------ reading
    def _load(self, path: str, schema) -> tuple[Any, list[dict[str, Any]]]:
        """The table at ``path`` and its rows as dicts, re-read only when the file changed."""
        key = file_key(path)  # before reading: a change after it shows as a new key next time
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        table = _read_table(path, schema)
        value = (table, table.to_pylist())
        self._cache[path] = (key, value)
        return value

    def _table(self, path: str, schema):
        return self._load(path, schema)[0]

    def _write(self, path: str, table) -> None:
        """Write ``table`` atomically and keep it as the cached content (no re-read)."""
        _write_table(path, table)
        self._cache[path] = (file_key(path), (table, table.to_pylist()))

    def _rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._load(self._meta_path, _schema())[1]]

    def _meta_state(self, fresh: bool = True) -> tuple[FileKey, list[dict[str, Any]]]:
        """Key and rows of the metadata table; as last read unless ``fresh``."""
        if fresh or self._meta_path not in self._cache:
            self._load(self._meta_path, _schema())
        key, (_, rows) = self._cache[self._meta_path]
        return key, rows

    def _log_state(self, fresh: bool = True) -> tuple[FileKey, list[dict[str, Any]], int]:
        """Key, entries and end of complete lines of the serving log; as last read unless ``fresh``."""
        if self._log is not None and not fresh:
            return self._log
        key = file_key(self._log_path)
        if self._log is not None and self._log[0] == key:
            return self._log
        if key == MISSING:
            legacy = _read_table(os.path.join(self.root, _LEGACY_LOG_NAME), _log_schema())
            entries, end = legacy.to_pylist(), 0
        else:
            with open(self._log_path, "rb") as f:
                entries, end = _parse_log(f.read(), self._log_path)
        self._log = (key, entries, end)
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

    def _derive_status(self, row: dict[str, Any], active: int | None, served: set[int]) -> dict[str, Any]:
        if row["version"] == active:
            row["status"] = "active"
        elif row["status"] not in ("rejected",) and row["version"] in served:
            row["status"] = "retired"
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
        """Metadata of every stored version, oldest first (the active one has status "active")."""
        served = {e["to_version"] for e in self._log_rows()}
        active = self.active_version
        return [self._derive_status(row, active, served) for row in self._rows()]

    def versions(self) -> list[int]:
        """Version numbers, oldest first."""
        return [row["version"] for row in self._rows()]

    def _row(self, version: int) -> dict[str, Any]:
        """Stored metadata row of ``version`` (status as stored)."""
        with self._lock:
            rows = self._load(self._meta_path, _schema())[1]
        for row in reversed(rows):  # the newest versions are the ones asked for most
            if row["version"] == version:
                return dict(row)
        raise VersionNotFoundError(f"model version {version} is not in the registry {self.root} "
                                   f"(stored: {self.versions()})")

    def get(self, version: int) -> dict[str, Any]:
        """Metadata row of ``version``; :class:`VersionNotFoundError` if it is not stored."""
        served = {e["to_version"] for e in self._log_rows()}
        return self._derive_status(self._row(version), self.active_version, served)

    def weights_path(self, version: int) -> str:
        """Path of the safetensors file of ``version``."""
        return os.path.join(self.root, f"v{int(version):06d}.safetensors")

    def load_bytes(self, version: int) -> bytes:
        """The verified safetensors bytes of ``version``."""
        return self.load_verified(version)[0]

    def load_verified(self, version: int) -> tuple[bytes, str]:
        """The safetensors bytes of ``version`` and their sha256, verified against the record."""
        row = self._row(version)
        path = self.weights_path(version)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise ChecksumMismatchError(
                f"weights of model version {version} are missing ({path}); the registry lists "
                f"sha256 {row['sha256']}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != row["sha256"]:
            raise ChecksumMismatchError(
                f"weights of model version {version} ({path}) have sha256 {digest}, the registry "
                f"recorded {row['sha256']}: the file is corrupted or was replaced; not loading it")
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
        """This process's descriptor of the writers' lock file, opened once.

        Re-opened in a forked child: an ``flock`` belongs to the open file, which a fork
        shares, so a child locking its inherited descriptor would not exclude its parent.
        """
        if self._lock_owner != os.getpid():
            fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            weakref.finalize(self, os.close, fd)
            self._lock_file, self._lock_owner = fd, os.getpid()
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
        meta = self._table(self._meta_path, _schema()).schema.metadata or {}
        stored = int(meta.get(b"next_version", b"1"))
        used = [r["version"] for r in self._rows()] + [e["to_version"] for e in self.serving_log()]
        return max(used + [self._max_file_version(), stored - 1], default=0) + 1

    def _write_rows(self, rows: list[dict[str, Any]], next_version: int | None = None) -> None:
        import pyarrow as pa

        if next_version is None:
            next_version = self._next_version()
        schema = _schema().with_metadata({"next_version": str(next_version)})
        self._write(self._meta_path, pa.Table.from_pylist(rows, schema=schema))

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
            ``ci_high``, ``status``); missing ones are null.  ``version``, ``created_at`` and
            ``sha256`` are set by the registry.
        """
        meta = _checked_metadata(metadata)  # before anything is written: a refusal leaves no file
        status = meta.get("status", "candidate")
        if status not in ("candidate", "rejected"):
            raise ValueError(f"metadata['status']={status!r}: must be 'candidate' or 'rejected' "
                             f"('active' and 'retired' follow from the serving log: use set_active)")
        data = bytes(state) if isinstance(state, (bytes, bytearray, memoryview)) else state_dict_bytes(state)
        with self._writing():
            rows = self._rows()
            version = self._next_version()
            path = self.weights_path(version)
            atomic_write_bytes(path, data)
            row = {c: None for c in COLUMNS}
            row.update(meta)
            row.update(version=version, created_at=float(meta.get("created_at") or time.time()),
                       sha256=hashlib.sha256(data).hexdigest(), status=status)
            for key in ("train_loss", "val_loss", "val_accuracy", "improvement_pct", "ci_low", "ci_high"):
                if row[key] is not None and not math.isfinite(float(row[key])):
                    row[key] = None
            self._write_rows(rows + [row], version + 1)
        log.info("registered model version %d (%s, sha256 %s)", version, status, row["sha256"][:12])
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
        if status not in ("candidate", "rejected"):
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

    def set_active(self, version: int, reason: str = "manual", *, at: float | None = None,
                   verify: bool = True) -> None:
        """Make ``version`` the served one and append the change to the serving log.

        The weights are verified first (unless the caller just did, ``verify=False``): a
        version whose checksum does not match is never made active
        (:class:`ChecksumMismatchError`).
        """
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"reason={reason!r}: must be a non-empty string")
        version = int(version)
        with self._lock:
            if verify:
                self.verify(version)
            # First on what this process last read (the usual case: it is the only writer);
            # if another process changed either file meanwhile, re-read and try again.
            fresh = False
            while True:
                meta_key, rows = self._meta_state(fresh)
                log_key, entries, end = self._log_state(fresh)
                if not any(row["version"] == version for row in rows):
                    if fresh:
                        raise VersionNotFoundError(f"model version {version} is not in the "
                                                   f"registry {self.root} (stored: {self.versions()})")
                elif log_key == MISSING:
                    entry = self._start_log(version, reason, at)
                    if entry is not None:
                        break
                else:
                    entry = _log_entry(entries, version, reason, at)
                    key = append_if_unchanged(self._lock_fd(), self._log_path, end, _log_line(entry),
                                              [(self._meta_path, meta_key), (self._log_path, log_key)])
                    if key is not None:
                        entries.append(entry)
                        self._log = (key, entries, key[2])
                        break
                fresh = True
        log.info("model version %s -> %d (%s)", entry["from_version"], version, reason)

    def _start_log(self, version: int, reason: str, at: float | None) -> dict[str, Any] | None:
        """Create the serving log with its first entry (after any legacy entries); return it.

        None if another process created the log first (the caller then appends instead).
        """
        with self._writing():
            _, rows = self._meta_state()
            key, entries, _ = self._log_state()
            if key != MISSING:
                return None
            if not any(row["version"] == version for row in rows):
                raise VersionNotFoundError(f"model version {version} is not in the registry {self.root}")
            entries = entries + [_log_entry(entries, version, reason, at)]
            data = b"".join(_log_line(e) for e in entries)
            atomic_write_bytes(self._log_path, data)
            self._log = (file_key(self._log_path), entries, len(data))
            self._unlink(os.path.join(self.root, _LEGACY_LOG_NAME))
        return entries[-1]

    def remove(self, version: int) -> None:
        """Delete ``version`` (row first, then its weights).  The active version cannot be removed."""
        with self._writing():
            if version == self.active_version:
                raise RegistryError(f"model version {version} is active and cannot be removed")
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

        Keeps the ``keep_last_n`` newest versions, removes versions older than ``max_age_days``
        even among those, and never removes the active version.  Weights files left behind by a
        crash between writing weights and listing them are deleted too.
        """
        if isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 0:
            raise ValueError(f"keep_last_n={keep_last_n!r}: must be an integer >= 0")
        if max_age_days is not None and not (max_age_days > 0):
            raise ValueError(f"max_age_days={max_age_days!r}: must be > 0 or None")
        now = time.time() if now is None else now
        with self._writing():
            active = self.active_version
            rows = self._rows()
            keep_newest = {r["version"] for r in rows[max(0, len(rows) - keep_last_n):]}
            removed = []
            for row in rows:
                v = row["version"]
                too_old = max_age_days is not None and now - row["created_at"] > max_age_days * 86400
                if v != active and (v not in keep_newest or too_old):
                    removed.append(v)
            if removed:
                self._write_rows([r for r in rows if r["version"] not in removed])
            listed = {r["version"] for r in rows} - set(removed)
            for name in os.listdir(self.root):
                m = _WEIGHTS_RE.match(name)
                if m and int(m.group(1)) not in listed:
                    self._unlink(os.path.join(self.root, name))
                elif is_temp_name(name) or name.startswith(".tmp-"):  # .tmp-: older versions' prefix
                    self._unlink(os.path.join(self.root, name))
                elif name == _LEGACY_LOG_NAME and os.path.exists(self._log_path):  # already folded in
                    self._unlink(os.path.join(self.root, name))
        if removed:
            log.info("registry cleanup removed versions %s", removed)
        return removed
