"""Journaled, atomic apply and rollback of a diff on the real tree.

:meth:`Applier.apply` computes the new contents with ``git apply`` in a scratch directory
holding copies of the touched files, checks them against what the sandbox tested, then runs one
*transaction*:

1. write-ahead journal ``<state>/journal/<id>.<op>.json``: the operation, every file's original
   bytes (or "absent") and new bytes with their sha256, sealed with the sha256 of the whole
   document, fsynced (file and directory) before any file of the tree is touched;
2. each file replaced atomically (temp file in the same directory, fsync, rename, directory
   fsync) or removed;
3. the journal marked committed, the applied record (originals + hashes of what was written,
   sealed as well) saved, the journal removed.

Every tree file is reached from the tree's root one directory at a time with ``O_NOFOLLOW``:
a symlink anywhere below the root (``conf.toml -> /etc/shadow``, ``pkg -> /``) is refused, never
read or written through.

:meth:`Applier.recover` (run at start-up) replays leftover journals: an uncommitted one puts every
file back to its original bytes (and deletes temp files a killed write left), so a crash (even
``kill -9``) mid-apply leaves the tree exactly as before; a committed one is finished. A journal
that fails its checksums is never replayed: it is moved aside (``*.corrupt-<time>``), nothing is
written from it, and :meth:`Applier.apply` refuses (:class:`JournalCorruptError`, naming the tree
files a person must check) until that file is deleted. :meth:`Applier.rollback` refuses with
:class:`RollbackConflictError` when a file no longer holds what the apply wrote.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

from .._io import (
    FileLock,
    atomic_write_at,
    atomic_write_sealed_json,
    fsync_dir,
    is_temp_name,
    owner_alive,
    owner_token,
    read_sealed_json,
    remove_orphan_temps,
)
from ..errors import (
    AppliedRecordCorruptError,
    JournalCorruptError,
    PatchError,
    RollbackConflictError,
    TreeChangedError,
)
from ..home import HomeLayout
from .diffs import describe_diff, git_executable, touched_paths
from .trees import tree_sha256

__all__ = ["SCRATCH_PREFIX", "Applier", "remove_orphan_scratch"]

log = logging.getLogger(__name__)

#: Scratch directories of :meth:`Applier.compute` are ``<tmp>/vtx-apply-<owner token>-*``.
SCRATCH_PREFIX = "vtx-apply-"
_CORRUPT_SUFFIX = ".corrupt-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_FOLLOWED = (errno.ELOOP, errno.ENOTDIR)  # what O_NOFOLLOW (| O_DIRECTORY) gives on a symlink


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def remove_orphan_scratch(directory: str | None = None) -> list[str]:
    """Delete the scratch directories of :meth:`Applier.compute` in ``directory`` (default the
    temp directory) whose creating process is provably dead; returns their names.
    """
    directory = directory or tempfile.gettempdir()
    removed = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        token = name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if name.startswith(SCRATCH_PREFIX) and "." in token and not owner_alive(token):
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
            removed.append(name)
    return removed


# ----------------------------------------------------------------------------- tree access

def _symlink_refused(rel: str, part: str) -> PatchError:
    return PatchError(f"{rel}: {part!r} is a symlink or not a regular directory or file; "
                      "refusing to read or write through it")


def _open_dir(root_fd: int, rel_dir: str, rel: str, *, create: bool) -> int:
    """A descriptor of directory ``rel_dir`` below ``root_fd``, each component opened with
    ``O_NOFOLLOW`` (made with ``create``). FileNotFoundError if missing.
    """
    fd = os.dup(root_fd)
    try:
        for part in filter(None, rel_dir.split("/")):
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                os.fsync(fd)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _NOT_FOLLOWED:
                    raise _symlink_refused(rel, part) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Tree:
    """The files of the tree at ``root``, reached without following any symlink below it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _dir(self, rel: str, *, create: bool = False) -> tuple[int, str]:
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise PatchError(f"{rel!r} is not a plain path below the tree's root")
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            head, _, name = rel.rpartition("/")
            return _open_dir(root_fd, head, rel, create=create), name
        finally:
            os.close(root_fd)

    def read(self, rel: str) -> tuple[bytes | None, int]:
        """Contents (None if absent) and permission bits of ``rel``; PatchError if it or a
        directory above it is a symlink or not a regular file.
        """
        try:
            dfd, name = self._dir(rel)
        except FileNotFoundError:
            return None, 0o644
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dfd)
            except FileNotFoundError:
                return None, 0o644
            except OSError as exc:
                if exc.errno in _NOT_FOLLOWED:
                    raise _symlink_refused(rel, name) from None
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise _symlink_refused(rel, name)
                chunks = []
                while chunk := os.read(fd, 1 << 20):
                    chunks.append(chunk)
                return b"".join(chunks), st.st_mode & 0o7777
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    def write(self, rel: str, data: bytes | None, mode: int) -> None:
        """Atomically make ``rel`` hold ``data`` (None: remove it); the name itself is replaced,
        never followed.
        """
        dfd, name = self._dir(rel, create=data is not None)
        try:
            if data is None:
                try:
                    os.unlink(name, dir_fd=dfd)
                    os.fsync(dfd)
                except FileNotFoundError:
                    pass
            else:
                atomic_write_at(dfd, name, data, mode=mode)
        finally:
            os.close(dfd)

    def remove_temp_files(self, rel: str) -> None:
        """Delete temp files a killed write left in ``rel``'s directory."""
        try:
            dfd, _ = self._dir(rel)
        except (FileNotFoundError, PatchError):
            return
        try:
            for name in os.listdir(dfd):
                if is_temp_name(name):
                    os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)


# ----------------------------------------------------------------------------- records

def _file_entries(files: list[dict[str, Any]], path: str, error: type, remedy: str) -> list[dict[str, Any]]:
    """``files`` of a journal or applied record with ``before``/``after`` decoded and each
    checked against its recorded sha256.
    """
    out = []
    for i, f in enumerate(files):
        try:
            rel = f["path"]
            decoded = {}
            for key in ("before", "after"):
                data = None if f[key] is None else base64.b64decode(f[key], validate=True)
                if _sha(data) != f[f"{key}_sha256"]:
                    raise error(path, f"the saved {key!r} bytes of {rel} fail their sha256",
                                remedy=remedy)
                decoded[key] = data
            mode = f["mode"]
            if not isinstance(rel, str) or not isinstance(mode, int):
                raise TypeError("path must be a string and mode an integer")
        except (KeyError, TypeError, ValueError) as exc:  # (a bad base64 is a ValueError)
            raise error(path, f"file entry {i} is malformed ({exc!r})", remedy=remedy) from None
        out.append({"path": rel, "mode": mode, **decoded})
    return out


def _encode_files(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"path": f["path"], "mode": f["mode"], "before": _b64(f["before"]),
             "after": _b64(f["after"]), "before_sha256": _sha(f["before"]),
             "after_sha256": _sha(f["after"])} for f in files]


def _named_paths(raw: bytes) -> list[str]:
    """Tree paths a damaged journal still names, read as far as its bytes allow: its
    ``covers`` list (sorted first, ahead of the contents) or else its ``path`` fields.
    """
    covers = re.search(rb'"covers": \[([^\]]*)', raw)
    found = re.findall(rb'"([^"\\]{1,4096})"', covers.group(1)) if covers else []
    found += re.findall(rb'"path": "([^"\\]{1,4096})"', raw)
    return sorted({m.decode("utf-8", "replace") for m in found})


class Applier:
    """Applies diffs to ``root``; its state (journal, applied records, lock) lives under the
    Vortex home ``home`` (see :class:`vortex.home.HomeLayout`).

    Every method holds the home's apply lock (threads and processes); :meth:`locked` lets a
    caller hold it across several steps (the engine's approve → apply → applied).
    """

    def __init__(self, root: str | os.PathLike[str], home: str | os.PathLike[str]) -> None:
        layout = HomeLayout(home)
        self.root = os.path.realpath(os.fspath(root))
        self.home = layout.root
        self.state_dir = layout.rsi
        self.journal_dir = layout.journal
        self.applied_dir = layout.applied
        os.makedirs(self.journal_dir, exist_ok=True)
        os.makedirs(self.applied_dir, exist_ok=True)
        self._lock = FileLock(layout.apply_lock)
        self._tree = _Tree(self.root)

    def locked(self) -> FileLock:
        """The applier's lock (re-entrant), for a caller's multi-step critical section."""
        return self._lock

    def _record_path(self, pid: str) -> str:
        return os.path.join(self.applied_dir, f"{pid}.json")

    def is_applied(self, pid: str) -> bool:
        """Whether proposal ``pid`` has an applied record: its apply committed and no rollback
        has since.

        Only the record's existence is checked (not its checksums, and without the lock): the
        engine asks it after a failed transaction was replayed, to learn whether the change
        landed.
        """
        return os.path.exists(self._record_path(pid))

    # -- computing the new contents with a real patch tool
    def compute(self, diff: str) -> dict[str, bytes | None]:
        """New contents of every file ``diff`` touches (None = deleted), without touching the tree.

        Raises
        ------
        PatchError
            Unsafe paths, a refused kind of change (see :func:`vortex.rsi.diffs.describe_diff`),
            a symlink on a touched path, or a diff that does not apply to the current tree.
        SandboxError
            git is not installed.
        """
        touched = touched_paths(describe_diff(diff, self.root))  # as the sandbox read it
        git = git_executable()
        with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{owner_token()}-") as scratch:
            tree = os.path.join(scratch, "tree")
            os.mkdir(tree)
            for rel in touched:
                data, mode = self._tree.read(rel)
                if data is not None:
                    os.makedirs(os.path.dirname(os.path.join(tree, rel)), exist_ok=True)
                    with open(os.path.join(tree, rel), "wb") as fh:
                        fh.write(data)
                    os.chmod(os.path.join(tree, rel), mode)
            patch = os.path.join(scratch, "p.diff")
            with open(patch, "w", encoding="utf-8") as fh:
                fh.write(diff if diff.endswith("\n") else diff + "\n")
            r = subprocess.run([git, "apply", "--whitespace=nowarn", "-p1", patch], cwd=tree,
                               check=False, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                    "GIT_CEILING_DIRECTORIES": scratch, "HOME": scratch},
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise PatchError(f"diff does not apply to {self.root}: {r.stderr.strip()}")
            result = _Tree(tree)  # git may have made a symlink: refused like one in the tree
            return {rel: result.read(rel)[0] for rel in touched}

    # -- records on disk
    def _load_journal(self, path: str) -> dict[str, Any]:
        remedy = "it is not replayed"
        doc = read_sealed_json(path, JournalCorruptError, remedy=remedy)
        try:
            if doc["op"] not in ("apply", "rollback") or doc["state"] not in ("pending", "committed"):
                raise ValueError(f"op={doc['op']!r} state={doc['state']!r}")
            doc["files"] = _file_entries(doc["files"], path, JournalCorruptError, remedy)
            if doc["record"] is not None:
                doc["record"]["files"] = _file_entries(doc["record"]["files"], path,
                                                       JournalCorruptError, remedy)
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalCorruptError(path, f"is not a journal ({exc!r})", remedy=remedy) from None
        return doc

    def _save_journal(self, path: str, journal: dict[str, Any]) -> None:
        # "covers" sorts before the contents, so even a journal cut short names its tree files
        doc = dict(journal, files=_encode_files(journal["files"]),
                   covers=[f["path"] for f in journal["files"]])
        if journal["record"] is not None:
            doc["record"] = dict(journal["record"], files=_encode_files(journal["record"]["files"]))
        atomic_write_sealed_json(path, doc)

    def load_record(self, pid: str) -> dict[str, Any]:
        """The applied record of proposal ``pid``, verified (files' bytes decoded).

        Raises
        ------
        PatchError
            ``pid`` has no applied record.
        AppliedRecordCorruptError
            The record fails its checksums.
        """
        path = self._record_path(pid)
        remedy = ("the rollback is refused and nothing was changed; restore the record from a "
                  "backup, or restore the tree files it names by hand and delete it")
        try:
            doc = read_sealed_json(path, AppliedRecordCorruptError, remedy=remedy)
        except FileNotFoundError:
            raise PatchError(f"proposal {pid} has no applied record in {self.applied_dir}") from None
        try:
            if doc["id"] != pid:
                raise ValueError(f"it is the record of {doc['id']!r}")
            doc["files"] = _file_entries(doc["files"], path, AppliedRecordCorruptError, remedy)
        except (KeyError, TypeError, ValueError) as exc:
            raise AppliedRecordCorruptError(path, f"is not an applied record ({exc!r})",
                                            remedy=remedy) from None
        return doc

    def problems(self) -> list[JournalCorruptError]:
        """Damaged journals set aside by :meth:`recover` and not yet cleared by a person; while
        there is one, :meth:`apply` and :meth:`rollback` refuse.
        """
        out = []
        for name in sorted(os.listdir(self.journal_dir)):
            if _CORRUPT_SUFFIX not in name:
                continue
            path = os.path.join(self.journal_dir, name)
            try:
                with open(path, "rb") as fh:
                    named = _named_paths(fh.read())
            except OSError:
                named = []
            files = ", ".join(named) or "(none readable: compare the whole tree with its backups)"
            out.append(JournalCorruptError(
                path, f"a journal that failed its checksums; recovery wrote nothing from it, so "
                      f"these tree files may hold a half-done change: {files}",
                remedy=f"check them against their applied record or backups and repair them by "
                       f"hand, then delete {path} to allow applies again"))
        return out

    # -- the transaction
    def _write_files(self, files: list[dict[str, Any]], key: str) -> None:
        for f in files:
            data = f[key]
            try:
                unchanged = self._tree.read(f["path"])[0] == data
            except PatchError:  # a symlink planted since: replaced below, never followed
                unchanged = False
            if not unchanged:
                self._tree.write(f["path"], data, f["mode"])

    def _transaction(self, pid: str, op: str, files: list[dict[str, Any]],
                     record: dict[str, Any] | None) -> None:
        jpath = os.path.join(self.journal_dir, f"{pid}.{op}.json")
        journal = {"id": pid, "op": op, "state": "pending", "files": files, "record": record}
        self._save_journal(jpath, journal)                # 1. intent is durable
        self._write_files(files, "after")                 # 2. the tree changes
        journal["state"] = "committed"
        self._save_journal(jpath, journal)                # 3. commit point
        self._finish(journal)
        os.unlink(jpath)
        fsync_dir(self.journal_dir)

    def _finish(self, journal: dict[str, Any]) -> None:
        path = self._record_path(journal["id"])
        if journal["op"] == "apply":
            rec = journal["record"]
            atomic_write_sealed_json(path, dict(rec, files=_encode_files(rec["files"])))
        elif os.path.exists(path):
            os.unlink(path)
            fsync_dir(self.applied_dir)

    def recover(self) -> list[str]:
        """Replay leftover journals (see module docstring); returns ``"<id>:<op>:<outcome>"``
        with outcome ``undone``, ``completed`` or ``corrupt`` (set aside, see :meth:`problems`).
        Also removes temp files of killed writes and orphaned scratch directories.
        """
        done = []
        with self._lock:
            for d in (self.journal_dir, self.applied_dir):
                remove_orphan_temps(d)
            remove_orphan_scratch()
            for name in sorted(os.listdir(self.journal_dir)):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                jpath = os.path.join(self.journal_dir, name)
                pid, _, op = name[:-len(".json")].rpartition(".")
                try:
                    journal = self._load_journal(jpath)
                except JournalCorruptError as exc:
                    aside = f"{jpath}{_CORRUPT_SUFFIX}{time.strftime('%Y%m%dT%H%M%S')}"
                    os.replace(jpath, aside)
                    fsync_dir(self.journal_dir)
                    log.error("%s; moved to %s, nothing replayed", exc, aside)
                    done.append(f"{pid}:{op}:corrupt")
                    continue
                for f in journal["files"]:
                    self._tree.remove_temp_files(f["path"])
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

    def apply(self, pid: str, diff: str, *, tested_files: Mapping[str, str | None] | None = None,
              tested_tree: str | None = None) -> dict[str, Any]:
        """Apply ``diff`` to the tree as proposal ``pid``; returns the applied record's summary
        (``{"id", "summary": {path: {"before_sha256", "after_sha256"}}}``).

        Parameters
        ----------
        tested_files
            Path → sha256 (None: deleted) of each file in the candidate the sandbox tested;
            the computed files must be exactly these.
        tested_tree
            :func:`vortex.rsi.trees.tree_sha256` of the tree the test started from; checked
            under the lock, right before anything is written.

        Raises
        ------
        TreeChangedError
            The tree is not ``tested_tree``; nothing was written.
        PatchError
            The diff does not apply, a touched path is or passes a symlink, or a computed file
            differs from the tested one (the message names it); nothing was written.
        JournalCorruptError
            A damaged journal awaits a person (see :meth:`problems`).
        """
        with self._lock:
            for problem in self.problems():
                raise problem
            if tested_tree is not None:
                now = tree_sha256(self.root)
                if now != tested_tree:
                    raise TreeChangedError(f"{self.root} changed since proposal {pid} was tested "
                                           f"(tree sha256 {now[:16]}... != tested {tested_tree[:16]}...)")
            new = self.compute(diff)
            if tested_files:
                for rel in sorted(set(new) | set(tested_files)):
                    if rel not in new or rel not in tested_files or _sha(new[rel]) != tested_files[rel]:
                        raise PatchError(
                            f"{rel}: the file this apply would write (sha256 {_sha(new.get(rel))}) is "
                            f"not the one the sandbox tested ({tested_files.get(rel, 'not touched')}); "
                            "refusing to apply what was not tested")
            files, summary = [], {}
            for rel, after in new.items():
                before, mode = self._tree.read(rel)
                files.append({"path": rel, "before": before, "after": after, "mode": mode})
                summary[rel] = {"before_sha256": _sha(before), "after_sha256": _sha(after)}
            record = {"id": pid, "files": files, "summary": summary}
            self._transaction(pid, "apply", files, record)
            return {"id": pid, "summary": summary}

    def rollback(self, pid: str) -> list[str]:
        """Restore the originals of proposal ``pid``'s files; returns the restored paths.

        Raises
        ------
        RollbackConflictError
            A file does not hold what the apply wrote (changed since); nothing is touched.
        PatchError
            ``pid`` was not applied by this applier.
        AppliedRecordCorruptError
            Its applied record is damaged; nothing is touched.
        """
        with self._lock:
            for problem in self.problems():
                raise problem
            record = self.load_record(pid)
            for f in record["files"]:
                try:
                    current = self._tree.read(f["path"])[0]
                except PatchError as exc:
                    raise RollbackConflictError(f"{exc}; refusing to roll back proposal {pid}") from None
                if _sha(current) != _sha(f["after"]):
                    raise RollbackConflictError(
                        f"{f['path']} changed since proposal {pid} was applied "
                        f"(sha256 {_sha(current)} != applied {_sha(f['after'])}); "
                        "refusing to roll back over that change")
            files = [{"path": f["path"], "before": f["after"], "after": f["before"],
                      "mode": f["mode"]} for f in record["files"]]
            self._transaction(pid, "rollback", files, None)
            return [f["path"] for f in files]

    def applied_ids(self) -> Iterator[str]:
        """Ids of the proposals with an applied record."""
        for name in sorted(os.listdir(self.applied_dir)):
            if name.endswith(".json") and not name.startswith("."):
                yield name[:-len(".json")]
