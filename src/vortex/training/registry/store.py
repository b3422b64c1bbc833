"""Where a registry's files live: the small interface the registry writes through.

Two implementations, one file each: :class:`~.local_store.LocalStore` (a directory: atomic
renames, an ``flock`` serialising writers, appends by one ``pwrite``) and
:class:`~.fsspec_store.FsspecStore` (any fsspec URL: ``s3://bucket/home/models``, ...).
:func:`open_store` picks one from the root; a local path never goes through fsspec, so it
keeps its speed.

A store names files by their name inside the registry (``"versions.arrow"``); a
:data:`~vortex._io.FileKey` is what a reader remembers of a file to notice it changed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from ..._fsspec import is_url
from ..._io import FileKey

__all__ = ["RegistryStore", "open_store", "is_url"]

class RegistryStore(Protocol):
    """The storage operations a :class:`~.model_registry.ModelRegistry` needs."""

    #: The registry's root (an absolute path, or the URL as given).
    root: str

    def path(self, name: str) -> str:
        """Path (or URL) of the file ``name``, as shown to users."""

    def key(self, name: str) -> FileKey:
        """The file's key now (:data:`~vortex._io.MISSING` if it does not exist)."""

    def read(self, name: str) -> bytes:
        """The file's bytes (FileNotFoundError if it does not exist)."""

    def write(self, name: str, data: bytes) -> None:
        """Replace the file with ``data``, whole or not at all."""

    def write_sealed(self, name: str, body: Any) -> None:
        """Replace the file with ``body`` and its sha256 seal (:func:`vortex._io.seal`)."""

    def append(self, name: str, offset: int, data: bytes,
               watched: Sequence[tuple[str, FileKey]]) -> FileKey | None:
        """Write ``data`` at ``offset`` of the existing file if every ``(name, key)`` in
        ``watched`` is unchanged; its new key, or None (nothing written) if one changed."""

    def remove(self, name: str) -> None:
        """Delete the file (no error if it is missing)."""

    def names(self) -> list[str]:
        """Names of the files in the registry."""

    def locked(self) -> AbstractContextManager[Any]:
        """Exclude other writers (processes) while held, where the storage can."""

    def remove_orphan_temps(self) -> list[str]:
        """Delete temporary files of writers that died mid-write; their names."""


def open_store(root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
               ) -> RegistryStore:
    """The store of the registry at ``root``: a local directory (created if missing) or,
    for a URL such as ``s3://bucket/prefix``, fsspec with ``storage_options``."""
    if is_url(root):
        from .fsspec_store import FsspecStore

        return FsspecStore(os.fspath(root), storage_options)
    from .local_store import LocalStore

    text = os.fspath(root)
    return LocalStore(text[len("file://"):] if text.startswith("file://") else text)
