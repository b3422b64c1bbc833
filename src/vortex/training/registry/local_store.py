"""A registry in a local (or POSIX-shared) directory.

Every file is replaced atomically (temp file in the same directory, fsync, ``os.replace``,
fsync of the directory; :mod:`vortex._io`). Writers in every process serialise on an
``flock`` of ``<root>/.lock``; the serving log's appends take it, check and write in one
compiled call (:func:`vortex._io.append_if_unchanged`) that releases the GIL once, so serving
threads barely notice a swap.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ... import _io
from ..._io import FileKey

__all__ = ["LocalStore"]


class LocalStore:
    """Files of a registry in the directory ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)
        self._lock_file: int | None = None
        self._lock_owner: int | None = None

    def path(self, name: str) -> str:
        """Path of the file ``name``."""
        return os.path.join(self.root, name)

    def key(self, name: str) -> FileKey:
        """The file's (inode, mtime, size)."""
        return _io.file_key(self.path(name))

    def read(self, name: str) -> bytes:
        """The file's bytes."""
        with open(self.path(name), "rb") as f:
            return f.read()

    def write(self, name: str, data: bytes) -> None:
        """Replace the file atomically."""
        _io.atomic_write_bytes(self.path(name), data)

    def write_sealed(self, name: str, body: Any) -> None:
        """Replace the file atomically with ``body`` and its seal."""
        _io.atomic_write_sealed(self.path(name), body)

    def append(self, name: str, offset: int, data: bytes,
               watched: Sequence[tuple[str, FileKey]]) -> FileKey | None:
        """One ``pwrite`` at ``offset`` under the writers' lock if ``watched`` is unchanged."""
        return _io.append_if_unchanged(self._lock_fd(), self.path(name), offset, data,
                                       [(self.path(n), k) for n, k in watched])

    def remove(self, name: str) -> None:
        """Unlink the file and make that durable."""
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return
        _io.fsync_dir(self.root)

    def names(self) -> list[str]:
        """Names in the directory."""
        return os.listdir(self.root)

    def _lock_fd(self) -> int:
        """This process's descriptor of the writers' lock file, opened once.

        Re-opened in a forked child: an ``flock`` belongs to the open file, which a fork
        shares, so a child locking its inherited descriptor would not exclude its parent.
        """
        if self._lock_owner != os.getpid():
            fd = os.open(self.path(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            weakref.finalize(self, os.close, fd)
            self._lock_file, self._lock_owner = fd, os.getpid()
        return self._lock_file  # type: ignore[return-value]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the writers' ``flock``."""
        fd = self._lock_fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def remove_orphan_temps(self) -> list[str]:
        """Temporary files of killed writers (:func:`vortex._io.remove_orphan_temps`)."""
        return _io.remove_orphan_temps(self.root)
