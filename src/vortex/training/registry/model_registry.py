"""The model registry: weights (safetensors), a metadata table and a serving log, on a store.

Files of a registry (names inside its root)::

    versions.arrow          one row per version (:mod:`.schema`: VersionMeta, sealed Arrow IPC)
    serving_log.jsonl       one checksummed JSON line per swap / rollback (:mod:`.serving_log`)
    v000007.safetensors     weights of version 7
    .lock                   advisory lock serialising writers (local store only)

The root is a directory or an fsspec URL (:mod:`.store`): a local directory keeps atomic
renames, an ``flock`` and one-``pwrite`` appends (:mod:`.local_store`); object storage gets
whole-object puts, conditional on S3 (:mod:`.fsspec_store`, which says what is atomic there).

Writes are ordered so that the registry is valid after a crash at any moment: the weights
file is complete before the row that lists it, and a row is removed before its weights file.
Temporary files of writers killed mid-write are deleted when a registry is opened.

Nothing read is believed unchecked: the metadata table's seal is verified before Arrow parses
it, each weights file is checked against the sha256 in its row before it is loaded, each
serving-log line against its CRC-32 and the version chain.  Damage raises
:class:`~vortex.errors.RegistryCorruptError` (or :class:`~vortex.errors.ChecksumMismatchError`
for weights) naming the file and what to do; :func:`verify_registry` lists every problem
without raising.

Swaps are optimistic: a swap trusts what this process last read, and the store appends only
if nothing it read has changed (locally: take the lock, check and write in one call that
releases the GIL once, so serving threads barely notice it; the rewrite of a whole Arrow file
it replaces added ~20 % to their p99 during a burst of swaps).

The stored ``status`` holds what the trainer decided (:class:`VersionStatus` ``candidate`` or
``rejected``); :meth:`ModelRegistry.list_versions` reports ``active`` for the served version
and ``retired`` for versions that served before.  Pinned versions (:meth:`ModelRegistry.pin`)
are never removed by :meth:`ModelRegistry.cleanup`, and neither are the active version and
the one it replaced (the version a rollback returns to).

This module is ~610 lines because :class:`ModelRegistry` is one state machine over three
files (cached views, the compare-and-swap of the active version, the crash-safe write order);
the formats and the storage live in their own modules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from ..._io import MISSING, FileKey
from ...errors import ChecksumMismatchError, CorruptFileError, RegistryError, VersionNotFoundError
from ..statuses import VersionStatus
from .schema import COLUMNS, META_NAME, check_rows, checked_metadata, decode_table, encodable, encode_table
from .serving_log import LEGACY_LOG_NAME, LOG_NAME, log_entry, log_line, parse_log, read_legacy_log
from .store import RegistryStore, open_store

__all__ = ["ModelRegistry", "state_dict_bytes", "verify_registry"]

log = logging.getLogger("vortex.training.registry")

_WEIGHTS_RE = re.compile(r"^v(\d{6,})\.safetensors$")


def _weights_name(version: int) -> str:
    return f"v{int(version):06d}.safetensors"


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


class ModelRegistry:
    """Model versions under ``root``: weights (safetensors) + metadata (Arrow) + serving log.

    Thread-safe, and several processes may share one root (on a local directory, writers take
    a file lock; on object storage see :mod:`.fsspec_store`).

    Parameters
    ----------
    root
        Directory of the registry (created if missing), or an fsspec URL such as
        ``s3://bucket/home/models``.
    storage_options
        For a URL: options of its fsspec filesystem (``endpoint_url``, credentials...).

    Raises
    ------
    RegistryCorruptError
        ``versions.arrow`` or ``serving_log.jsonl`` is damaged (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike, *,
                 storage_options: dict[str, Any] | None = None) -> None:
        self._store: RegistryStore = open_store(root, storage_options)
        self.root = self._store.root
        #: The fsspec options it was opened with (a training worker opens it again with them).
        self.storage_options = dict(storage_options or {})
        self._meta_path = self._store.path(META_NAME)
        self._log_path = self._store.path(LOG_NAME)
        self._lock = threading.RLock()
        # metadata table as last read: (file key, (table, rows, pinned versions))
        self._meta: tuple[FileKey, tuple[Any, list[dict[str, Any]], frozenset[int]]] | None = None
        # serving log as last read: (file key, entries, offset of the next append, its prefix)
        self._log: tuple[FileKey, list[dict[str, Any]], int, bytes] | None = None
        self._torn_seen: tuple[FileKey, int] | None = None
        removed = self._store.remove_orphan_temps()
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
        key = self._store.key(META_NAME)
        if self._meta is None or self._meta[0] != key:
            table = decode_table(self._read(META_NAME), self._meta_path)
            rows = table.to_pylist()
            raw_pins = (table.schema.metadata or {}).get(b"pinned", b"[]")
            try:
                pinned = json.loads(raw_pins)
            except ValueError:
                pinned = raw_pins
            check_rows(self._meta_path, rows, pinned)
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
        key = self._store.key(LOG_NAME)
        if self._log is not None and self._log[0] == key:
            return self._log
        if key == MISSING:
            legacy = self._read(LEGACY_LOG_NAME)
            entries = [] if legacy is None else read_legacy_log(legacy, self._store.path(LEGACY_LOG_NAME))
            end, sep, torn = 0, b"", False
        else:
            entries, end, sep, torn = parse_log(self._store.read(LOG_NAME), self._log_path)
        if torn and self._torn_seen != (key, end):
            self._torn_seen = (key, end)
            log.warning("%s: ignoring an incomplete last line at byte %d (a writer was killed "
                        "mid-append; that swap never happened); the next swap overwrites it",
                        self._log_path, end)
        self._log = (key, entries, end, sep)
        return self._log

    def _read(self, name: str) -> bytes | None:
        """The bytes of the file ``name``, or None if it does not exist."""
        try:
            return self._store.read(name)
        except FileNotFoundError:
            return None

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
            row["status"] = VersionStatus.ACTIVE
        elif row["status"] != VersionStatus.REJECTED and row["version"] in served:
            row["status"] = VersionStatus.RETIRED
        else:
            row["status"] = VersionStatus(row["status"])
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
        """Path (or URL) of the safetensors file of ``version``."""
        return self._store.path(_weights_name(version))

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
            data = self._store.read(_weights_name(version))
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
    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._lock, self._store.locked():
            yield

    def _next_version(self) -> int:
        """The number the next registered version gets (numbers are never reused)."""
        table = self._meta[1][0] if self._meta is not None else decode_table(None, self._meta_path)
        stored = int((table.schema.metadata or {}).get(b"next_version", b"1"))
        used = [r["version"] for r in self._rows()] + [e["to_version"] for e in self.serving_log()]
        return max([*used, self._max_file_version(), stored - 1], default=0) + 1

    def _write_rows(self, rows: list[dict[str, Any]], next_version: int | None = None,
                    pinned: set[int] | frozenset[int] | None = None) -> None:
        """Replace the metadata table (under the writers' lock, after a fresh read)."""
        if next_version is None:
            next_version = self._next_version()
        if pinned is None:
            pinned = self._meta_state(fresh=False)[2]
        listed = {r["version"] for r in rows}
        table, body = encode_table(rows, next_version, sorted(set(pinned) & listed))
        self._store.write_sealed(META_NAME, body)
        self._meta = (self._store.key(META_NAME), (table, table.to_pylist(), frozenset(pinned) & listed))

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
        meta = checked_metadata(metadata)
        data = bytes(state) if isinstance(state, (bytes, bytearray, memoryview)) else state_dict_bytes(state)
        with self._writing():
            rows = self._rows()
            version = self._next_version()
            row: dict[str, Any] = dict.fromkeys(COLUMNS)
            row.update(meta)
            row.update(version=version, created_at=meta.get("created_at") or time.time(),
                       sha256=hashlib.sha256(data).hexdigest())
            self._store.write(_weights_name(version), data)
            try:
                self._write_rows([*rows, row], version + 1)
            except BaseException:  # the weights file must not outlive a row that was never listed
                self._store.remove(_weights_name(version))
                raise
        log.info("registered model version %d (%s, sha256 %s)", version, row["status"], row["sha256"][:12])
        return version

    def _max_file_version(self) -> int:
        best = 0
        for name in self._store.names():
            m = _WEIGHTS_RE.match(name)
            if m:
                best = max(best, int(m.group(1)))
        return best

    def set_status(self, version: int, status: str) -> None:
        """Change the stored status of ``version`` (:class:`VersionStatus` ``candidate`` or
        ``rejected``, or their values).
        """
        if status not in VersionStatus.stored():
            raise ValueError(f"status={status!r}: must be 'candidate' or 'rejected'")
        with self._writing():
            rows = self._rows()
            for row in rows:
                if row["version"] == version:
                    row["status"] = str(VersionStatus(status))
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
        from ..._scalars import as_index

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
        if not isinstance(reason, str) or not reason or not encodable(reason):
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
                    entry = log_entry(entries, version, reason, at)
                    key = self._store.append(LOG_NAME, end, sep + log_line(entry),
                                             [(META_NAME, meta_key), (LOG_NAME, log_key)])
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
            entries = [*entries, log_entry(entries, version, reason, at)]
            data = b"".join(log_line(e) for e in entries)
            self._store.write(LOG_NAME, data)
            self._log = (self._store.key(LOG_NAME), entries, len(data), b"")
            self._store.remove(LEGACY_LOG_NAME)
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
            self._store.remove(_weights_name(version))

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
            from ..._scalars import as_real

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
            names = self._store.names()
            for name in names:
                m = _WEIGHTS_RE.match(name)
                if ((m and int(m.group(1)) not in listed) or name.startswith(".tmp-")
                        or (name == LEGACY_LOG_NAME and LOG_NAME in names)):
                    self._store.remove(name)
            self._store.remove_orphan_temps()
        if removed:
            log.info("registry cleanup removed versions %s", removed)
        return removed


def verify_registry(root: str | os.PathLike, *,
                    storage_options: dict[str, Any] | None = None) -> list[CorruptFileError]:
    """Every damaged file of the registry at ``root``, without raising; empty when all is sound.

    Checks ``versions.arrow`` (seal, Arrow validity, rows), ``serving_log.jsonl`` (each line's
    checksum and the chain of versions) and every listed version's weights (sha256). Each
    problem is a :class:`~vortex.errors.CorruptFileError` naming the file and what to do.
    """
    store = open_store(root, storage_options)
    problems: list[CorruptFileError] = []
    rows: list[dict[str, Any]] = []
    for name in (META_NAME, LOG_NAME):
        try:
            data = store.read(name)
        except FileNotFoundError:
            continue
        try:
            if name == META_NAME:
                rows = decode_table(data, store.path(name)).to_pylist()
            else:
                parse_log(data, store.path(name))
        except CorruptFileError as exc:
            problems.append(exc)
    if problems:
        return problems
    reg = ModelRegistry(root, storage_options=storage_options)
    for row in rows:
        try:
            reg.verify(row["version"])
        except ChecksumMismatchError as exc:
            problems.append(exc)
    return problems
