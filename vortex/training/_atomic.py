"""Atomic file writes: temp file in the same directory, fsync, ``os.replace``, fsync of the dir."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry change (a rename or an unlink) to disk."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` so that a reader (or a crash) sees either the old or the new file.

    ``write`` receives a binary file object of a temporary file in the same directory; it is
    flushed, fsync'ed and renamed over ``path``, then the directory is fsync'ed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of a bytes object."""
    atomic_write(path, lambda f: f.write(data))
