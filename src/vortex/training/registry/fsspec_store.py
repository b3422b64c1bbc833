"""A registry on shared storage reached through fsspec (``s3://bucket/home/models``, ...).

What is atomic here, and what is not:

* **Each file is replaced whole or not at all.** On object stores (S3, GCS, Azure) a file is
  one object and a write is one ``PUT``: readers see the old object or the new one, never a
  mix. On other fsspec filesystems (SFTP, a FUSE mount...) a write goes to a temporary name
  first and is then moved over the file; that is atomic only where the filesystem's rename is.
* **Appends are whole-object rewrites.** Objects cannot be appended to: a swap reads the
  serving log and puts it back with the new line, O(log length) rather than the local
  store's one ``pwrite``. Swaps are rare (minutes apart); the log of a year of hourly swaps
  is ~1 MB.
* **Writers are not locked out; they are caught.** There is no ``flock`` on an object store.
  On S3 every write of the metadata table or the serving log is a *conditional* ``PUT``
  (``If-Match`` the ETag this process last read, ``If-None-Match: *`` for a file it saw
  missing): a writer whose view is stale gets :class:`~vortex.errors.RegistryError` (or, for a
  swap, a re-read and retry) instead of silently overwriting the other's change. Weights
  files are written before the row that lists them and are never rewritten, so they need no
  condition. Elsewhere (no conditional writes), run one writer per registry: the control
  plane (see ``docs/DISTRIBUTED.md``).
* **A crash leaves the registry valid** for the same reason as locally: weights before the row
  that lists them, a row removed before its weights. A weights object orphaned by a crash is
  removed by the next ``cleanup``.
* Listings and metadata are read fresh (fsspec's directory cache is dropped first), so a reader
  polling the active version sees a swap on its next poll.
"""

from __future__ import annotations

import posixpath
import threading
import zlib
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from ..._fsspec import conditional_writes, filesystem, precondition_failed, put_whole
from ..._io import MISSING, FileKey, seal
from ...errors import RegistryError

__all__ = ["FsspecStore"]

class FsspecStore:
    """Files of a registry under the fsspec URL ``root``.

    Parameters
    ----------
    root
        An fsspec URL (``s3://bucket/prefix``); created if the storage has directories.
    storage_options
        Passed to the fsspec filesystem (for S3: ``endpoint_url``, ``key``, ``secret``...).
    """

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.fs, self._base = filesystem(self.root, storage_options)
        self._base = self._base.rstrip("/")
        self._conditional = conditional_writes(self.fs)
        # the ETag (None: missing) each file had when this process last looked at it
        self._seen: dict[str, str | None] = {}
        self._lock = threading.RLock()
        self.fs.makedirs(self._base, exist_ok=True)

    def _at(self, name: str) -> str:
        return posixpath.join(self._base, name)

    def path(self, name: str) -> str:
        """URL of the file ``name``."""
        return f"{self.root}/{name}"

    def key(self, name: str) -> FileKey:
        """(1, a hash of the ETag or mtime, size) as the storage reports it now."""
        path = self._at(name)
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            self._seen[name] = None
            return MISSING
        tag = str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("created"))
        self._seen[name] = tag
        return 1, zlib.crc32(tag.encode()), int(info.get("size") or 0)

    def read(self, name: str) -> bytes:
        """The file's bytes."""
        return self.fs.cat_file(self._at(name))

    def write(self, name: str, data: bytes) -> None:
        """Replace the file whole: one (conditional, on S3) PUT, or a temp file moved over it.

        Raises
        ------
        RegistryError
            Another writer changed the file since this process last read it (S3).
        """
        path = self._at(name)
        with self._lock:
            condition: dict[str, str] = {}
            if self._conditional and name in self._seen:
                tag = self._seen[name]
                condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
            try:
                put_whole(self.fs, path, data, **condition)
            except Exception as exc:
                if condition and precondition_failed(exc):
                    raise RegistryError(
                        f"{self.path(name)} was changed by another writer since this process "
                        f"read it; nothing was written (retry the operation)") from exc
                raise
            self.key(name)  # what this process wrote is what it has seen

    def write_sealed(self, name: str, body: Any) -> None:
        """Replace the file with ``body`` and its seal."""
        self.write(name, bytes(body) + seal(body))

    def append(self, name: str, offset: int, data: bytes,
               watched: Sequence[tuple[str, FileKey]]) -> FileKey | None:
        """Rewrite the file as its first ``offset`` bytes plus ``data`` if ``watched`` is
        unchanged (checked now, and on S3 again by the PUT's condition).
        """
        with self._lock:
            if any(self.key(n) != k for n, k in watched):
                return None
            try:
                self.write(name, self.read(name)[:offset] + data)
            except RegistryError:
                return None  # changed between the check and the PUT: the caller re-reads
            return self.key(name)

    def remove(self, name: str) -> None:
        """Delete the file (no error if it is missing)."""
        try:
            self.fs.rm_file(self._at(name))
        except FileNotFoundError:
            pass
        self._seen.pop(name, None)

    def names(self) -> list[str]:
        """Names of the files under the root."""
        self.fs.invalidate_cache(self._base)
        try:
            return [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self._base, detail=False)]
        except FileNotFoundError:
            return []

    def locked(self) -> nullcontext[None]:
        """No cross-process lock on this storage (see the module docstring)."""
        return nullcontext()

    def remove_orphan_temps(self) -> list[str]:
        """Nothing: whose a temporary file is cannot be told across machines, so temporary
        names are left to :meth:`ModelRegistry.cleanup`.
        """
        return []
