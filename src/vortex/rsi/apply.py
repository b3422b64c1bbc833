"""Journaled, atomic apply and rollback of a diff on the real tree.

:meth:`Applier.apply` computes the new contents with ``git apply`` in a scratch directory
holding copies of the touched files, then runs one *transaction*:

1. write-ahead journal ``<state>/journal/<id>.json``: the operation, every file's original bytes
   (or "absent") and new bytes, fsynced (file and directory) before any file of the tree is touched;
2. each file replaced atomically (temp file in the same directory, fsync, ``os.replace``, directory
   fsync) or removed;
3. the journal marked committed, the applied record (originals + hashes of what was written)
   saved, the journal removed.

:meth:`Applier.recover` (run at start-up) replays leftover journals: an uncommitted one puts every
file back to its original bytes (and deletes temp files a killed write left), so a crash (even
``kill -9``) mid-apply leaves the tree exactly as before; a committed one is finished. :meth:`Applier.rollback` refuses with
:class:`RollbackConflictError` when a file no longer holds what the apply wrote.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import PatchError, RollbackConflictError
from .._io import atomic_write_bytes, atomic_write_json, fsync_dir, is_temp_name
from .diffs import check_paths, parse_diff

__all__ = ["Applier"]

log = logging.getLogger(__name__)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


class Applier:
    """Applies diffs to ``root``; state (journal, applied records, lock) lives in ``state_dir``."""

    def __init__(self, root: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(os.fspath(root))
        self.state_dir = os.fspath(state_dir)
        self.journal_dir = os.path.join(self.state_dir, "journal")
        self.applied_dir = os.path.join(self.state_dir, "applied")
        os.makedirs(self.journal_dir, exist_ok=True)
        os.makedirs(self.applied_dir, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(os.path.join(self.state_dir, "apply.lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _record_path(self, pid: str) -> str:
        return os.path.join(self.applied_dir, f"{pid}.json")

    def is_applied(self, pid: str) -> bool:
        return os.path.exists(self._record_path(pid))

    # -- computing the new contents with a real patch tool
    def compute(self, diff: str) -> dict[str, bytes | None]:
        """New contents of every file ``diff`` touches (None = deleted), without touching the tree.

        Raises
        ------
        PatchError
            Unsafe paths or a diff that does not apply to the current tree.
        """
        touched = check_paths(parse_diff(diff), self.root)
        git = shutil.which("git")
        if git is None:
            raise PatchError("git is not installed; it is needed to apply diffs")
        with tempfile.TemporaryDirectory(prefix="vtx-apply-") as scratch:
            tree = os.path.join(scratch, "tree")
            os.mkdir(tree)
            for rel in touched:
                src = os.path.join(self.root, rel)
                if os.path.isfile(src):
                    os.makedirs(os.path.dirname(os.path.join(tree, rel)), exist_ok=True)
                    shutil.copy2(src, os.path.join(tree, rel))
            patch = os.path.join(scratch, "p.diff")
            with open(patch, "w", encoding="utf-8") as fh:
                fh.write(diff if diff.endswith("\n") else diff + "\n")
            r = subprocess.run([git, "apply", "--whitespace=nowarn", "-p1", patch], cwd=tree,
                               env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                    "GIT_CEILING_DIRECTORIES": scratch, "HOME": scratch},
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise PatchError(f"diff does not apply to {self.root}: {r.stderr.strip()}")
            return {rel: _read(os.path.join(tree, rel)) for rel in touched}

    # -- the transaction
    def _write_files(self, files: list[dict[str, Any]], key: str) -> None:
        for f in files:
            full = os.path.join(self.root, f["path"])
            data = _unb64(f[key])
            if data is None:
                if os.path.lexists(full):
                    os.unlink(full)
                    fsync_dir(os.path.dirname(full))
            elif _read(full) != data:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                atomic_write_bytes(full, data, mode=f.get("mode"))

    def _transaction(self, pid: str, op: str, files: list[dict[str, Any]],
                     record: dict[str, Any] | None) -> None:
        jpath = os.path.join(self.journal_dir, f"{pid}.{op}.json")
        journal = {"id": pid, "op": op, "state": "pending", "files": files, "record": record}
        atomic_write_json(jpath, journal)                 # 1. intent is durable
        self._write_files(files, "after")                 # 2. the tree changes
        journal["state"] = "committed"
        atomic_write_json(jpath, journal)                 # 3. commit point
        self._finish(journal)
        os.unlink(jpath)
        fsync_dir(self.journal_dir)

    def _finish(self, journal: dict[str, Any]) -> None:
        path = self._record_path(journal["id"])
        if journal["op"] == "apply":
            atomic_write_json(path, journal["record"])
        elif os.path.exists(path):
            os.unlink(path)
            fsync_dir(self.applied_dir)

    def _remove_temp_files(self, files: list[dict[str, Any]]) -> None:
        """Delete temp files a killed atomic write left next to the journal's files."""
        for d in {os.path.dirname(os.path.join(self.root, f["path"])) for f in files}:
            if os.path.isdir(d):
                for name in os.listdir(d):
                    if is_temp_name(name):
                        os.unlink(os.path.join(d, name))

    def recover(self) -> list[str]:
        """Replay leftover journals (see module docstring); returns ``"<id>:<op>:<outcome>"``."""
        done = []
        with self._locked():
            for d in (self.journal_dir, self.applied_dir):  # temp files of killed state writes
                for name in os.listdir(d):
                    if is_temp_name(name):
                        os.unlink(os.path.join(d, name))
            for name in sorted(os.listdir(self.journal_dir)):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                jpath = os.path.join(self.journal_dir, name)
                with open(jpath, encoding="utf-8") as fh:
                    journal = json.load(fh)
                self._remove_temp_files(journal["files"])
                if journal["state"] == "committed":
                    self._finish(journal)
                    outcome = "completed"
                else:
                    self._write_files(journal["files"], "before")
                    outcome = "undone"
                os.unlink(jpath)
                fsync_dir(self.journal_dir)
                log.warning("journal %s replayed: %s %s", name, journal["op"], outcome)
                done.append(f"{journal['id']}:{journal['op']}:{outcome}")
        return done

    def apply(self, pid: str, diff: str) -> dict[str, Any]:
        """Apply ``diff`` to the tree as proposal ``pid``; returns the applied record."""
        with self._locked():
            new = self.compute(diff)
            files, summary = [], {}
            for rel, after in new.items():
                full = os.path.join(self.root, rel)
                before = _read(full)
                mode = os.stat(full).st_mode & 0o7777 if before is not None else 0o644
                files.append({"path": rel, "before": _b64(before), "after": _b64(after), "mode": mode})
                summary[rel] = {"before_sha256": _sha(before), "after_sha256": _sha(after)}
            record = {"id": pid, "files": files, "summary": summary}
            self._transaction(pid, "apply", files, record)
            return record

    def rollback(self, pid: str) -> list[str]:
        """Restore the originals of proposal ``pid``'s files; returns the restored paths.

        Raises
        ------
        RollbackConflictError
            A file does not hold what the apply wrote (changed since); nothing is touched.
        PatchError
            ``pid`` was not applied by this applier.
        """
        with self._locked():
            try:
                with open(self._record_path(pid), encoding="utf-8") as fh:
                    record = json.load(fh)
            except FileNotFoundError:
                raise PatchError(f"proposal {pid} has no applied record in {self.applied_dir}") from None
            for f in record["files"]:
                current = _read(os.path.join(self.root, f["path"]))
                if _sha(current) != _sha(_unb64(f["after"])):
                    raise RollbackConflictError(
                        f"{f['path']} changed since proposal {pid} was applied "
                        f"(sha256 {_sha(current)} != applied {_sha(_unb64(f['after']))}); "
                        "refusing to roll back over that change")
            files = [{"path": f["path"], "before": f["after"], "after": f["before"],
                      "mode": f.get("mode")} for f in record["files"]]
            self._transaction(pid, "rollback", files, None)
            return [f["path"] for f in files]
