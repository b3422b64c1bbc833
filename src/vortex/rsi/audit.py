"""Append-only, hash-chained audit log (JSON lines) with a head file that shows truncation.

Each line is ``{"seq", "ts", "event", "data", "prev", "hash"}`` where ``hash`` is the sha256 of
the canonical JSON of the other fields and ``prev`` the hash of the line before (64 zeros for
the first). Editing, deleting or reordering a line breaks the chain at that line.

A chain cannot show that its *end* is missing, so after every append (fsynced) the log's
**head** -- ``{"seq", "hash"}`` of its last entry -- is written atomically to a file beside it
(``audit.jsonl`` → ``audit.head``). A log that ends before its head was truncated. A crash
between the append and the head write leaves the head one entry behind; that is accepted.

A writer killed mid-append (a large entry is written in several pieces) leaves a *torn tail*:
bytes after the last newline. Before the next append, or at :meth:`AuditLog.recover` (run when
the engine starts), the tail is dealt with and the fact recorded as an ``audit_recovered``
entry of the chain, never silently:

* a complete, hash-valid entry that only lacks its newline (the kill came after the last byte
  but one, or the newline was cut off) keeps its place: the newline is restored. Treating it as
  torn would throw away an entry whose hash proves it is exactly what was written;
* anything else is moved, byte for byte, to ``audit.jsonl.torn-<time>-<sha256 prefix>`` and the
  log is cut back to its last complete line (those bytes were never an acknowledged entry).

A head that does not match the log (ahead of it: truncation; another hash: rewritten history or
a damaged head) is recorded the same way, and :meth:`AuditLog.verify` then reports the loss for
good (``ok=False``): the log can no longer claim to be complete. Appending continues, so the
engine keeps a record of what happens next.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from .._io import atomic_write_bytes
from ..errors import AuditLogError

__all__ = ["RECOVERY_EVENT", "AuditLog", "AuditVerification"]

_GENESIS = "0" * 64
_FIELDS = frozenset({"seq", "ts", "event", "data", "prev", "hash"})
#: Event of the entries that record a recovery (``data["kind"]`` says which).
RECOVERY_EVENT = "audit_recovered"
# recovery kinds after which entries are known to be missing (verify is never OK again)
_LOSS_KINDS = frozenset({"truncation_detected", "head_mismatch"})


def _digest(entry: dict[str, Any]) -> str:
    body = {k: entry[k] for k in ("seq", "ts", "event", "data", "prev")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The entry a line holds if it is well formed and its hash matches, else None."""
    try:
        e = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not (isinstance(e, dict) and set(e) == _FIELDS and isinstance(e["seq"], int)
            and isinstance(e["prev"], str) and isinstance(e["event"], str)):
        return None
    try:
        return e if _digest(e) == e["hash"] else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class AuditVerification:
    """Result of :meth:`AuditLog.verify`.

    Attributes
    ----------
    ok
        Every line verifies, the log reaches its head, nothing is pending recovery and no loss
        was ever recorded.
    entries
        Entries that verify (the good prefix when ``ok`` is False).
    first_bad_line, reason
        1-based line of the first problem (None if none) and what it is.
    recoverable
        Not ok only because an interrupted append left a tail (torn bytes, or a last entry
        without its newline) that :meth:`AuditLog.recover` -- run by the next append or engine
        start -- sets aside or repairs.
    head_seq, head_status
        The head's sequence number and how it compares with the log: ``match``, ``behind``
        (one entry behind: a crash between an append and its head write; fine), ``missing``
        (no head file: truncation cannot be checked), ``none`` (empty log, no head), ``ahead``
        (the log lost entries), ``mismatch`` or ``unreadable``.
    torn_tail_bytes
        Bytes after the last complete line.
    recoveries
        The ``audit_recovered`` entries of the log: ``{"line", "kind", ...}``.
    notes
        Remarks that do not make the log bad (a head one behind, no head file).
    exists
        Whether the log file exists.
    """

    ok: bool
    entries: int
    first_bad_line: int | None = None
    reason: str = ""
    recoverable: bool = False
    head_seq: int | None = None
    head_status: str = "none"
    torn_tail_bytes: int = 0
    recoveries: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    exists: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The verification as a JSON-ready dict (tuples as lists), as the dashboard shows it."""
        return {"ok": self.ok, "entries": self.entries, "first_bad_line": self.first_bad_line,
                "reason": self.reason, "recoverable": self.recoverable, "head_seq": self.head_seq,
                "head_status": self.head_status, "torn_tail_bytes": self.torn_tail_bytes,
                "recoveries": list(self.recoveries), "notes": list(self.notes),
                "exists": self.exists}


@dataclass
class _Tail:
    """Where a log's complete lines end, its last complete entry and what follows it."""

    end: int
    last: dict[str, Any] | None
    torn: bytes = b""


class AuditLog:
    """The audit log at ``path`` (head: ``<path without extension>.head``).

    Appends are serialised across threads and processes (``flock`` of the log). Nothing is
    created until the first append.
    """

    def __init__(self, path: str | os.PathLike[str],
                 head_path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.fspath(path)
        # a log outside a home (tests, exports) keeps its head beside it: <name>.head
        self.head_path = os.fspath(head_path) if head_path is not None else os.path.splitext(self.path)[0] + ".head"
        self._lock = threading.Lock()

    def _error(self, problem: str, line: int | None = None) -> AuditLogError:
        return AuditLogError(
            self.path, problem, position=line,
            remedy=f"`vortex audit verify` shows the first bad line; to start a new chain, move "
                   f"{os.path.basename(self.path)} and {os.path.basename(self.head_path)} aside "
                   "together, keeping them for investigation")

    # ------------------------------------------------------------------ head
    def _read_head(self) -> tuple[int, str] | str | None:
        """(seq, hash) of the head file, None if there is none, or why it is unreadable."""
        try:
            with open(self.head_path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        try:
            head = json.loads(raw)
            seq, digest = head["seq"], head["hash"]
            if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(digest, str):
                raise TypeError(f"seq={seq!r} hash={digest!r}")
        except (ValueError, KeyError, TypeError) as exc:
            return f"head file {self.head_path} is unreadable ({exc})"
        return seq, digest

    def _head_status(self, last: dict[str, Any] | None, head: tuple[int, str] | str | None
                     ) -> tuple[str, str]:
        """(status, explanation) of ``head`` against the last entry ``last``."""
        if isinstance(head, str):
            return "unreadable", head
        if head is None:
            return ("none", "") if last is None else (
                "missing", f"no head file {os.path.basename(self.head_path)}: a truncation "
                           "cannot be ruled out")
        seq, digest = head
        if last is not None and seq == last["seq"] and digest == last["hash"]:
            return "match", ""
        if last is not None and seq == last["seq"] - 1 and digest == last["prev"]:
            return "behind", (f"head one entry behind (seq {seq}, log at {last['seq']}): an append "
                              "completed just before a crash; the next append updates it")
        last_seq = -1 if last is None else last["seq"]
        if seq > last_seq:
            return "ahead", (f"the log ends at seq {last_seq} but its head records seq {seq}: "
                             f"entries {last_seq + 1}..{seq} were removed (truncated or deleted)")
        return "mismatch", (f"the head records seq {seq} with hash {digest[:16]}..., which the log "
                            "does not hold there (history rewritten, or the head damaged)")

    def _write_head(self, entry: dict[str, Any]) -> None:
        atomic_write_bytes(self.head_path, json.dumps({"seq": entry["seq"], "hash": entry["hash"]}).encode())

    # ------------------------------------------------------------------ tail
    def _tail(self, fh: BinaryIO) -> _Tail:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return _Tail(0, None)
        block = min(size, 65536)
        while True:  # read back until the last newline and the one before it are in view
            fh.seek(size - block)
            chunk = fh.read(block)
            nl = chunk.rfind(b"\n")
            if block == size or (nl >= 0 and chunk.rfind(b"\n", 0, nl) >= 0):
                break
            block = min(size, block * 2)
        if nl < 0:
            return _Tail(0, None, chunk)
        end = size - block + nl + 1
        raw = chunk[chunk.rfind(b"\n", 0, nl) + 1:nl]
        last = _parse(raw)
        if last is None:
            raise self._error("the last complete line is not a valid audit entry", None)
        return _Tail(end, last, chunk[nl + 1:])

    def _recover_locked(self, fh: BinaryIO) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Deal with a torn tail and a head that does not match (the log's flock is held);
        returns the recovery records to append and the last entry.
        """
        notes: list[dict[str, Any]] = []
        tail = self._tail(fh)
        last = tail.last
        if tail.torn:
            entry = _parse(tail.torn)
            if entry is not None and entry["prev"] == (last["hash"] if last else _GENESIS) and \
                    entry["seq"] == (last["seq"] + 1 if last else 0):
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
                last = entry
                notes.append({"kind": "newline_restored", "seq": entry["seq"],
                              "detail": "the last entry was complete but lacked its newline"})
            else:
                digest = hashlib.sha256(tail.torn).hexdigest()
                side = f"{self.path}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{digest[:12]}"
                atomic_write_bytes(side, tail.torn)
                fh.truncate(tail.end)
                fh.flush()
                os.fsync(fh.fileno())
                notes.append({"kind": "torn_tail_set_aside", "bytes": len(tail.torn),
                              "sha256": digest, "saved_to": os.path.basename(side),
                              "detail": "an append was interrupted; its partial line was moved "
                                        "out of the log"})
        head = self._read_head()
        status, why = self._head_status(last, head)
        if status == "missing":
            notes.append({"kind": "head_missing", "detail": why})
        elif status in ("ahead", "mismatch", "unreadable"):
            notes.append({"kind": "truncation_detected" if status == "ahead" else "head_mismatch",
                          "head": list(head) if isinstance(head, tuple) else None,
                          "log_last_seq": None if last is None else last["seq"], "detail": why})
        return notes, last

    def _write_entry(self, fh: BinaryIO, event: str, data: dict[str, Any],
                     last: dict[str, Any] | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"seq": 0 if last is None else last["seq"] + 1, "ts": time.time(),
                                 "event": event, "data": json.loads(json.dumps(data, default=str)),
                                 "prev": _GENESIS if last is None else last["hash"]}
        entry["hash"] = _digest(entry)
        fh.seek(0, os.SEEK_END)
        fh.write(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        fh.flush()  # appended in place under the flock, not replaced: not a vortex._io write
        os.fsync(fh.fileno())
        self._write_head(entry)  # after the fsync: a crash between leaves the head one behind
        return entry

    def _locked_append(self, events: list[tuple[str, dict[str, Any]]], *, always: bool
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Recover, then append ``events``; returns (recovery records, entries written)."""
        with self._lock:
            if not always and not os.path.exists(self.path) and not os.path.exists(self.head_path):
                return [], []
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    notes, last = self._recover_locked(fh)
                    written = []
                    for item in [(RECOVERY_EVENT, n) for n in notes] + events:
                        last = self._write_entry(fh, item[0], item[1], last)
                        written.append(last)
                    return notes, written
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ public
    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Append one entry (fsynced, then the head) and return it. A torn tail or a head that
        does not match is recovered first (see the module docstring).

        Raises
        ------
        AuditLogError
            The last complete line is not a valid entry (history damaged: see
            :meth:`verify`); nothing is appended.
        """
        return self._locked_append([(event, data)], always=True)[1][-1]

    def recover(self) -> list[dict[str, Any]]:
        """Recover a torn tail or a head that does not match (as :meth:`append` does before
        writing); returns the recovery records appended (none when the log was clean). Creates
        nothing for a missing log.
        """
        return self._locked_append([], always=False)[0]

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry, in order (a torn tail is left out).

        Raises
        ------
        AuditLogError
            A complete line is not JSON.
        """
        if not os.path.exists(self.path):
            return []
        out = []
        with open(self.path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)  # never read a line an append is half-way through
            try:
                for n, raw in enumerate(fh, start=1):
                    if not raw.endswith(b"\n"):
                        entry = _parse(raw)
                        if entry is not None:
                            out.append(entry)
                        break
                    try:
                        out.append(json.loads(raw))
                    except ValueError:
                        raise self._error("not a JSON audit entry", n) from None
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return out

    def check(self) -> AuditVerification:
        """:meth:`verify`, raising :class:`AuditLogError` (naming the file and line) unless OK."""
        v = self.verify()
        if not v.ok:
            raise self._error(v.reason, v.first_bad_line)
        return v

    def verify(self) -> AuditVerification:
        """Check every line's hash and link, the head and the tail; creates nothing."""
        head = self._read_head()
        if not os.path.exists(self.path):
            status, why = self._head_status(None, head)
            if status == "none":
                return AuditVerification(True, 0, exists=False)
            return AuditVerification(False, 0, 1, f"the log is missing: {why}",
                                     head_seq=head[0] if isinstance(head, tuple) else None,
                                     head_status=status, exists=False)
        prev, n, last = _GENESIS, 0, None
        recoveries: list[dict[str, Any]] = []
        torn = b""
        with open(self.path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                for n, raw in enumerate(fh, start=1):
                    if not raw.endswith(b"\n"):
                        torn, n = raw, n - 1  # noqa: PLW2901 - n counts the complete lines
                        break
                    e = _parse(raw)
                    if e is None:
                        try:
                            shaped = set(json.loads(raw)) == _FIELDS
                        except (ValueError, TypeError, RecursionError):
                            shaped = False
                        why = ("hash does not match the content (edited)" if shaped
                               else "not a JSON audit entry")
                        return AuditVerification(False, n - 1, n, why, exists=True)
                    if e["prev"] != prev:
                        return AuditVerification(False, n - 1, n, "prev does not match the previous "
                                                 "line's hash (a line was removed, inserted or reordered)")
                    if e["seq"] != n - 1:
                        return AuditVerification(False, n - 1, n, f"seq {e['seq']} where {n - 1} was expected")
                    if e["event"] == RECOVERY_EVENT and isinstance(e["data"], dict):
                        recoveries.append({"line": n, **e["data"]})
                    prev, last = e["hash"], e
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        unterminated = _parse(torn) if torn else None
        if unterminated is not None and (unterminated["prev"] != prev or unterminated["seq"] != n):
            unterminated = None
        status, why = self._head_status(unterminated or last, head)
        common: dict[str, Any] = dict(head_seq=head[0] if isinstance(head, tuple) else None,
                                      head_status=status, torn_tail_bytes=len(torn),
                                      recoveries=tuple(recoveries))
        notes = tuple(x for x in (why,) if x and status in ("behind", "missing"))
        for r in recoveries:
            if r.get("kind") in _LOSS_KINDS:
                return AuditVerification(False, n, r["line"], f"entries were lost before line "
                                         f"{r['line']}, as recorded there: {r.get('detail', '')}",
                                         notes=notes, **common)
        if status in ("ahead", "mismatch", "unreadable"):
            return AuditVerification(False, n, n + 1, why, notes=notes, **common)
        if unterminated is not None:
            return AuditVerification(False, n, n + 1, f"line {n + 1} is a complete entry without its "
                                     "final newline; the next append restores it", recoverable=True,
                                     notes=notes, **common)
        if torn:
            return AuditVerification(False, n, n + 1, f"an interrupted append left {len(torn)} bytes "
                                     f"after line {n}; the next append or engine start moves them to "
                                     f"{os.path.basename(self.path)}.torn-*", recoverable=True,
                                     notes=notes, **common)
        return AuditVerification(True, n, notes=notes, **common)
