"""Crash-safe file writes shared by every component that persists state.

A write goes to a temporary file in the destination's directory, is fsynced, renamed over
the destination with :func:`os.replace` (atomic on POSIX), and the directory is fsynced so
the rename itself survives a power cut. A crash at any moment leaves the old file or the new
one, never a mix. A ``kill -9`` mid-write can leave the temporary file behind: its name is
recognised by :func:`is_temp_name`, so recovery and clean-up code can delete it.

Append-only logs use :func:`append_if_unchanged` instead: one record per write, appended
under the writers' lock if the files the caller read are unchanged.

State that several processes rewrite (read, change, write back) is changed under a
:class:`FileLock`; since every writer of such a directory holds it, temporary files found while
holding it are provably orphans of killed writers (:func:`remove_temp_files`). Records that must
not be believed when damaged are written with :func:`checked_json_bytes` and read with
:func:`load_checked_json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

__all__ = ["FileKey", "FileLock", "MISSING", "append_if_unchanged", "atomic_write",
           "atomic_write_at", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "checked_json_bytes",
           "file_key", "fsync_dir", "is_temp_name", "load_checked_json", "owner_alive",
           "owner_token", "remove_temp_files"]

#: What a reader remembers of a file to notice that it changed: (inode, mtime in ns, size).
FileKey = tuple[int, int, int]
#: The key of a missing file.
MISSING: FileKey = (0, 0, 0)

_TEMP_PREFIX = ".vtx-"
_TEMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    """True if ``name`` (a file name, not a path) is an atomic write's temporary file."""
    return name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (renames, creations, unlinks) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *,
                 mode: int | None = None) -> None:
    """Atomically replace ``path`` with what ``write(file)`` writes to a binary file.

    Parameters
    ----------
    path
        Destination; its directory must exist.
    write
        Called once with the temporary file open for binary writing (it may stream into it).
    mode
        Permission bits given to the new file before the rename (e.g. those of the file it
        replaces); ``None`` leaves :func:`tempfile.mkstemp`'s ``0o600``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX,
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Atomically replace ``path`` with ``data`` (``mode`` as in :func:`atomic_write`).

    The whole protocol runs in one compiled call that releases the GIL once, instead of around
    each syscall: on a server with busy request threads every re-acquisition of the GIL is a
    forced hand-over that delays one of them (measured: a model swap's registry write went from
    ~14 ms to ~2 ms with four serving threads, and their p99 with it).
    """
    from ._native import _core

    err = _core.write_file_atomic(os.fspath(path), bytes(data), -1 if mode is None else mode)
    if err:
        raise OSError(err, os.strerror(err), os.fspath(path))


def atomic_write_at(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically replace the entry ``name`` of the open directory ``dir_fd`` with ``data``.

    The same protocol as :func:`atomic_write`, relative to a directory descriptor: a caller
    that opened each directory of a path itself (refusing symlinks) writes exactly there,
    whatever is renamed around it meanwhile. The temporary file is created with ``O_EXCL |
    O_NOFOLLOW`` and the rename replaces ``name`` itself (a symlink there is replaced, never
    followed).
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"name={name!r} must be a single path component")
    tmp = f"{_TEMP_PREFIX}{name}.{os.urandom(6).hex()}{_TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomically replace ``path`` with ``text``."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON (indent 1, sorted keys, UTF-8)."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def file_key(path: str | os.PathLike) -> FileKey:
    """The :data:`FileKey` of ``path`` (:data:`MISSING` if it does not exist)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return MISSING
    return st.st_ino, st.st_mtime_ns, st.st_size


def append_if_unchanged(lock_fd: int, path: str | os.PathLike, offset: int, data: bytes,
                        watched: Sequence[tuple[str | os.PathLike, FileKey]]) -> FileKey | None:
    """Append a record to the existing log ``path`` if nothing the caller read has changed.

    Under an exclusive ``flock`` of ``lock_fd`` (the lock every writer of these files takes),
    checks that each ``(file, key)`` in ``watched`` still has that :data:`FileKey`; if so,
    writes ``data`` at ``offset`` (the end of the last complete record: whatever follows is a
    torn write of a killed writer and is dropped), fdatasyncs, and returns ``path``'s new key.
    Returns None, having written nothing, if a watched file changed: re-read and retry.

    The lock, the checks and the write are one compiled call that releases the GIL once, so a
    writer that trusts its cached view costs busy request threads a single hand-over.
    """
    from ._native import _core

    rc, key = _core.append_if_unchanged(lock_fd, os.fspath(path), offset, bytes(data),
                                        [(os.fspath(f), k) for f, k in watched])
    if rc == -1:
        return None
    if rc:
        raise OSError(rc, os.strerror(rc), os.fspath(path))
    return key


class FileLock:
    """An exclusive lock held across threads (re-entrant per thread) and processes (``flock``
    of the file at ``path``, created if missing).

    ``flock`` belongs to an open file description, so a second ``open`` of the same file in
    the same process would wait for itself; the lock is therefore taken once per process and
    counted.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd = -1

    def __enter__(self) -> "FileLock":
        self._thread_lock.acquire()
        if self._depth == 0:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
            except BaseException:
                self._thread_lock.release()
                raise
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # closing the only descriptor releases the flock
        self._thread_lock.release()


def remove_temp_files(directory: str | os.PathLike, target: str = "", *,
                      lock: FileLock | None = None) -> list[str]:
    """Delete the temporary files of killed atomic writes in ``directory`` whose destination's
    name starts with ``target``; returns their names.

    Call it holding the lock every writer of those destinations holds, or pass that ``lock``
    (taken only when there is a candidate, so a clean directory gets no lock file): then no
    write is in flight and each such file is an orphan.
    """
    prefix = f"{_TEMP_PREFIX}{target}"

    def candidates() -> list[str]:
        names = os.listdir(directory) if os.path.isdir(directory) else ()
        return [n for n in names if is_temp_name(n) and n.startswith(prefix)]

    if not candidates():
        return []
    removed = []
    with lock if lock is not None else contextlib.nullcontext():
        for name in candidates():
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:].split()[19].decode()  # field 22; the name may hold spaces


def owner_token(pid: int | None = None) -> str:
    """``"<pid>.<start time>"`` of this process (or ``pid``): names an owner so that
    :func:`owner_alive` can later tell, despite PID reuse, whether it still runs."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{_start_time(pid) or 0}"


def owner_alive(token: str) -> bool:
    """Whether the process named by an :func:`owner_token` still runs. Unparseable tokens and
    hosts without ``/proc`` count as alive: only a provably dead owner's leftovers are removed."""
    try:
        pid_text, start = token.split(".", 1)
        pid = int(pid_text)
    except ValueError:
        return True
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return _start_time(pid) == start


_CHECKSUM_KEY = "checksum"


def _canonical_sha256(body: dict[str, Any]) -> str:
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return hashlib.sha256(data).hexdigest()


def checked_json_bytes(obj: dict[str, Any]) -> bytes:
    """``obj`` as JSON (indent 1, sorted keys) with a ``"checksum"`` key: the sha256 of its
    canonical form, so :func:`load_checked_json` can tell a damaged copy from the real one."""
    if _CHECKSUM_KEY in obj:
        raise ValueError(f"obj must not hold a {_CHECKSUM_KEY!r} key of its own")
    doc = dict(obj)
    doc[_CHECKSUM_KEY] = _canonical_sha256(obj)
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()


def load_checked_json(path: str | os.PathLike, error: type, *, remedy: str,
                      data: bytes | None = None) -> dict[str, Any]:
    """The object :func:`checked_json_bytes` wrote to ``path`` (or ``data``), verified.

    Raises
    ------
    error
        A :class:`vortex.errors.CorruptFileError` subclass, raised as ``error(path, problem,
        position=..., remedy=remedy)`` when the file is not JSON, lacks its checksum or does
        not match it.
    """
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read()
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise error(path, f"not valid JSON ({exc.__class__.__name__}: {exc})",
                    position=getattr(exc, "pos", None), remedy=remedy) from None
    if not isinstance(doc, dict) or not isinstance(doc.get(_CHECKSUM_KEY), str):
        raise error(path, "holds no checksum (not a file Vortex wrote, or damaged)", remedy=remedy)
    claimed = doc.pop(_CHECKSUM_KEY)
    try:
        actual = _canonical_sha256(doc)
    except ValueError as exc:  # NaN or infinity: never written by checked_json_bytes
        raise error(path, f"holds a value JSON cannot carry ({exc})", remedy=remedy) from None
    if actual != claimed:
        raise error(path, f"fails its checksum (sha256 {actual[:16]}... != recorded {claimed[:16]}...)",
                    remedy=remedy)
    return doc
