"""Identity of a source tree: which files count, and one digest over all of them.

A proposal is tested against one state of the target tree; :func:`tree_sha256` names that
state, so approving it later on a tree that changed meanwhile (another proposal applied, a
person edited a file) can be noticed and the proposal re-tested instead of trusted.
"""

from __future__ import annotations

import hashlib
import os

__all__ = ["SKIP_NAMES", "tree_sha256"]

#: Directory names that are caches or tooling state, never part of what a tree means.
SKIP_NAMES = frozenset({".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                        ".venv", ".vortex", ".hypothesis"})


def tree_sha256(root: str | os.PathLike[str]) -> str:
    """sha256 over every file under ``root`` (path, kind, permission bits, size, contents), in sorted
    order; directories in :data:`SKIP_NAMES` and ``*.pyc`` files are left out. A symlink counts
    by its target string and is never followed.
    """
    root = os.fspath(root)
    h = hashlib.sha256()
    entries: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in links]
        for name in filenames + links:
            if not name.endswith(".pyc"):
                entries.append(os.path.relpath(os.path.join(dirpath, name), root))
    for rel in sorted(entries):
        full = os.path.join(root, rel)
        st = os.lstat(full)
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        if os.path.islink(full):
            h.update(b"L" + os.readlink(full).encode("utf-8", "surrogateescape") + b"\0")
            continue
        h.update(b"F%o %d\0" % (st.st_mode & 0o7777, st.st_size))  # sized: no ambiguity
        with open(full, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
