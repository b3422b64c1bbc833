"""Crash-safe file writes shared by every component that persists state.

A write goes to a temporary file in the destination's directory, is fsynced, renamed over
the destination with :func:`os.replace` (atomic on POSIX), and the directory is fsynced so
the rename itself survives a power cut. A crash at any moment leaves the old file or the new
one, never a mix. A ``kill -9`` mid-write can leave the temporary file behind: its name
(:func:`is_temp_name`) carries the writer's pid, and the writer holds an ``flock`` on it until
the rename, so :func:`remove_orphan_temps` deletes exactly the ones whose writer died.

Files that must be checked before a parser touches them (Arrow files, whose reader trusts the
offsets it reads) are *sealed*: :func:`atomic_write_sealed` appends a trailer with the sha256
of the contents, and :func:`read_sealed` verifies it before returning a byte of them.

Append-only logs use :func:`append_if_unchanged` instead: one record per write, appended
under the writers' lock if the files the caller read are unchanged.

State that several processes rewrite (read, change, write back) is changed under a
:class:`FileLock`. JSON records that must not be believed when damaged are sealed like any
other file (:func:`atomic_write_sealed_json`, :func:`read_sealed_json`). A writer that must not
follow symlinks opens each directory itself and writes with :func:`atomic_write_at`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

__all__ = ["FileKey", "FileLock", "MISSING", "SEAL_SIZE", "append_if_unchanged", "atomic_write",
           "atomic_write_at", "atomic_write_bytes", "atomic_write_json", "atomic_write_sealed",
           "atomic_write_sealed_json", "atomic_write_text", "file_key", "fsync_dir",
           "is_arrow_ipc_file", "is_temp_name", "owner_alive", "owner_token", "pid_alive",
           "read_sealed", "read_sealed_json", "remove_orphan_temps", "seal", "unseal"]

#: What a reader remembers of a file to notice that it changed: (inode, mtime in ns, size).
FileKey = tuple[int, int, int]
#: The key of a missing file.
MISSING: FileKey = (0, 0, 0)

_TEMP_PREFIX = ".vtx-"
_TEMP_SUFFIX = ".tmp"
# ".vtx-<target>.<pid>-<random>.tmp"; files of earlier versions lack the "<pid>-"
_TEMP_RE = re.compile(r"^\.vtx-(?P<target>.+?)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+\.tmp$", re.DOTALL)

#: Trailer of a sealed file: magic, the sha256 of everything before it (hex), newline.
_SEAL_MAGIC = b"\n#vortex-sha256:"
SEAL_SIZE = len(_SEAL_MAGIC) + 64 + 1


def is_temp_name(name: str) -> bool:
    """True if ``name`` (a file name, not a path) is an atomic write's temporary file."""
    return name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists on this machine (a zombie counts: not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OverflowError:  # not a pid at all
        return False
    return True


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), None if unknown."""
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
    """Whether the process named by an :func:`owner_token` still runs (an unparseable token
    counts as alive: only a provably dead owner's leftovers are removed)."""
    try:
        pid_text, start = token.split(".", 1)
        pid = int(pid_text)
    except ValueError:
        return True
    if not pid_alive(pid):
        return False
    now = _start_time(pid)
    return now is None or now == start  # without /proc the pid alone decides


def remove_orphan_temps(directory: str | os.PathLike, target: str | None = None) -> list[str]:
    """Delete the temporary files that killed writers left in ``directory``; return their names.

    A temporary file is an orphan when no process holds its ``flock`` (every writer holds it
    from creation to rename, and the kernel drops it when the writer dies) and the pid in its
    name is not alive here (which covers the instant between creating it and locking it).
    Temporary files of live writers, in this process or another, are never touched. With
    ``target``, only the temporary files of writes to that file name are considered. Errors
    (a read-only directory, say) are ignored: cleaning is an optimisation, not a guarantee.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None or (target is not None and m["target"] != target):
            continue
        if m["pid"] is not None and pid_alive(int(m["pid"])):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
            removed.append(name)
        except OSError:  # locked: a live writer (in another pid namespace) is filling it
            continue
        finally:
            os.close(fd)
    if removed:
        try:
            fsync_dir(directory)
        except OSError:
            pass
    return removed


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (renames, creations, unlinks) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_file(path: Path) -> tuple[int, str]:
    """Create and lock the temporary file of a write to ``path`` (see the module docstring)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{path.name}.{os.getpid()}-",
                               suffix=_TEMP_SUFFIX, dir=path.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until close: marks a live writer's file
    return fd, tmp


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
    fd, tmp = _temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)  # still open and locked: the temp name never exists unlocked
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def _write_pieces(path: str | os.PathLike, pieces: Sequence[Any], mode: int | None) -> None:
    from ._native import _core

    err = _core.write_file_atomic(os.fspath(path), list(pieces), -1 if mode is None else mode)
    if err:
        raise OSError(err, os.strerror(err), os.fspath(path))


def atomic_write_bytes(path: str | os.PathLike, data: Any, *, mode: int | None = None) -> None:
    """Atomically replace ``path`` with ``data`` (``mode`` as in :func:`atomic_write`).

    ``data`` is any contiguous buffer (bytes, memoryview, ``pyarrow.Buffer``): it is written
    without a copy. The whole protocol runs in one compiled call that releases the GIL once,
    instead of around each syscall: on a server with busy request threads every re-acquisition
    of the GIL is a forced hand-over that delays one of them (measured: a model swap's registry
    write went from ~14 ms to ~2 ms with four serving threads, and their p99 with it).
    """
    _write_pieces(path, [data], mode)


def atomic_write_at(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically replace the entry ``name`` of the open directory ``dir_fd`` with ``data``.

    The protocol of :func:`atomic_write` (locked temporary file with the writer's pid in its
    name), relative to a directory descriptor: a caller that opened each directory of a path
    itself, refusing symlinks, writes exactly there whatever is renamed around it meanwhile.
    The temporary file is created with ``O_EXCL | O_NOFOLLOW`` and the rename replaces ``name``
    itself (a symlink there is replaced, never followed).
    """
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"name={name!r} must be a single path component")
    tmp = f"{_TEMP_PREFIX}{name}.{os.getpid()}-{os.urandom(6).hex()}{_TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until close: marks a live writer's file
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)


def seal(body: Any) -> bytes:
    """The trailer that :func:`atomic_write_sealed` appends to ``body`` (a buffer)."""
    # hashlib releases the GIL while it hashes a large buffer
    return _SEAL_MAGIC + hashlib.sha256(memoryview(body).cast("B")).hexdigest().encode() + b"\n"


def atomic_write_sealed(path: str | os.PathLike, body: Any, *, mode: int | None = None) -> None:
    """Atomically replace ``path`` with ``body`` followed by its sha256 seal (see :func:`read_sealed`)."""
    _write_pieces(path, [body, seal(body)], mode)


def is_arrow_ipc_file(data: bytes) -> bool:
    """True if ``data`` looks like a whole Arrow IPC file (its magic at both ends).

    The ``unsealed`` test of :func:`read_sealed` for Arrow files written before sealing.
    """
    return len(data) >= 12 and data[:6] == b"ARROW1" and data[-6:] == b"ARROW1"


def read_sealed(path: str | os.PathLike, error: Callable[..., Exception], *,
                unsealed: Callable[[bytes], bool] = lambda data: False,
                remedy: str | None = None) -> tuple[memoryview, bool]:
    """The verified contents of a file written by :func:`atomic_write_sealed`.

    Returns ``(body, sealed)``. A file whose seal does not match its contents raises
    ``error(path, problem, position=..., remedy=remedy)`` (a
    :class:`~vortex.errors.CorruptFileError` subclass), before anything parses the contents.
    A file without a seal is accepted only if ``unsealed(data)`` says it is a valid file of the
    format written before sealing existed (returned with ``sealed=False``: the caller must
    validate it fully); otherwise it is reported as truncated or damaged.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise error(path, "is a directory, not a file", remedy=remedy) from None
    return unseal(data, path, error, unsealed=unsealed, remedy=remedy)


def unseal(data: bytes, path: str | os.PathLike, error: Callable[..., Exception], *,
           unsealed: Callable[[bytes], bool] = lambda data: False,
           remedy: str | None = None) -> tuple[memoryview, bool]:
    """:func:`read_sealed` over bytes already read from ``path`` (from any storage)."""
    tail = data[-SEAL_SIZE:]
    if len(data) >= SEAL_SIZE and tail.startswith(_SEAL_MAGIC) and tail.endswith(b"\n"):
        body = memoryview(data)[:-SEAL_SIZE]
        recorded = bytes(tail[len(_SEAL_MAGIC):-1])
        if hashlib.sha256(body).hexdigest().encode() != recorded:
            raise error(path, "contents do not match their sha256 seal (the file is damaged)",
                        remedy=remedy)
        return body, True
    if unsealed(data):
        return memoryview(data), False
    raise error(path, f"no valid sha256 seal at the end of its {len(data)} bytes (truncated or "
                "damaged)", position=max(0, len(data) - SEAL_SIZE), remedy=remedy)


def atomic_write_sealed_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON (indent 1, sorted keys), sealed."""
    atomic_write_sealed(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode())


def read_sealed_json(path: str | os.PathLike, error: Callable[..., Exception], *,
                     remedy: str) -> Any:
    """The object :func:`atomic_write_sealed_json` wrote to ``path``, verified by its seal
    first (``error`` as in :func:`read_sealed`; FileNotFoundError if missing)."""
    body, _ = read_sealed(path, error, remedy=remedy)
    try:
        return json.loads(bytes(body))
    except ValueError as exc:  # sealed but not JSON: written by something else
        raise error(path, f"is not JSON ({exc})", remedy=remedy) from None


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
