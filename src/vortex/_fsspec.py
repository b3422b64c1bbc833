"""Files on shared storage named by fsspec URLs (``s3://bucket/home/models``): the few
operations Vortex needs, for the components that accept a URL (the model registry, the saved
sample buffer).

A local path never comes here (:func:`is_url` is False for it), so local files keep the
atomic, fsynced code of :mod:`vortex._io`. Here a file is written whole or not at all: on an
object store by one ``PUT`` (readers see the old object or the new one), elsewhere by a write
to a temporary name moved over the file (atomic where the filesystem's rename is). fsspec is
imported only when a URL is used (``pip install 'vortex[remote]'``).
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from typing import Any

__all__ = ["conditional_writes", "filesystem", "is_url", "precondition_failed", "put_whole", "read_url",
           "write_url"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Protocols whose write of one file is a single all-or-nothing object PUT.
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})
# Object stores that take If-Match / If-None-Match on a PUT (passed through by the fsspec driver).
_CONDITIONAL = frozenset({"s3", "s3a"})


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL with a scheme other than ``file``."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    return isinstance(text, str) and bool(_URL.match(text)) and not text.startswith("file://")


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it.

    Raises
    ------
    ModuleNotFoundError
        fsspec (or the protocol's driver, such as s3fs) is not installed; the message says
        what to install.
    """
    try:
        from fsspec.core import url_to_fs

        return url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:
        raise ModuleNotFoundError(f"{url!r} is a URL, which needs fsspec and its driver for "
                                  f"the protocol (pip install 'vortex[remote]'): {exc}") from exc


def _protocols(fs: Any) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


def conditional_writes(fs: Any) -> bool:
    """Whether ``fs`` honours S3's ``IfMatch`` / ``IfNoneMatch`` on :func:`put_whole`."""
    return bool(_protocols(fs) & _CONDITIONAL)


def precondition_failed(exc: BaseException) -> bool:
    """Whether ``exc`` is a storage's refusal of a conditional write (HTTP 412)."""
    text = f"{type(exc).__name__} {exc} {exc.__cause__!r}"
    return "PreconditionFailed" in text or "412" in text


def put_whole(fs: Any, path: str, data: bytes, **condition: Any) -> None:
    """Write ``data`` as the file ``path``, whole or not at all (see the module docstring).

    ``condition`` (S3's ``IfMatch`` / ``IfNoneMatch``) is passed to an object store's PUT.
    """
    if _protocols(fs) & OBJECT_STORES:
        fs.pipe_file(path, bytes(data), **condition)
        return
    head, name = posixpath.split(path)
    if head:  # as on an object store, writing a file needs no directory made beforehand
        fs.makedirs(head, exist_ok=True)
    temp = posixpath.join(head, f".vtx-{name}.{uuid.uuid4().hex}.tmp")
    fs.pipe_file(temp, bytes(data))
    fs.mv(temp, path)


def read_url(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of the file at ``url`` (FileNotFoundError if there is none)."""
    fs, path = filesystem(url, storage_options)
    return fs.cat_file(path)


def write_url(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` as the file at ``url``, whole or not at all."""
    fs, path = filesystem(url, storage_options)
    put_whole(fs, path, data)
