"""Append-only, hash-chained audit log (JSON lines).

Each line is ``{"seq", "ts", "event", "data", "prev", "hash"}`` where ``hash`` is the sha256 of
the canonical JSON of the other fields and ``prev`` the hash of the line before (64 zeros for
the first). Editing, deleting or reordering a line breaks the chain at that line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..errors import AuditLogError

__all__ = ["AuditLog", "AuditVerification"]

_GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: entry[k] for k in ("seq", "ts", "event", "data", "prev")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class AuditVerification:
    """Result of :meth:`AuditLog.verify`: ``first_bad_line`` is 1-based, None when intact."""

    ok: bool
    entries: int
    first_bad_line: int | None = None
    reason: str = ""


class AuditLog:
    """The audit log at ``path``; appends are serialised across threads and processes (flock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._lock = threading.Lock()

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Append one entry (fsynced) and return it."""
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                prev, seq = self._tail(fh)
                entry: dict[str, Any] = {"seq": seq, "ts": time.time(), "event": event,
                                         "data": json.loads(json.dumps(data, default=str)),
                                         "prev": prev}
                entry["hash"] = _digest(entry)
                fh.seek(0, os.SEEK_END)
                fh.write(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n")
                fh.flush()  # appended in place under the flock, not replaced: not a vortex._io write
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    @staticmethod
    def _tail(fh: Any) -> tuple[str, int]:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return _GENESIS, 0
        block = min(size, 65536)
        while True:
            fh.seek(size - block)
            chunk = fh.read(block)
            lines = chunk.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or block == size:
                break
            block = min(size, block * 2)
        try:
            last = json.loads(lines[-1])
            return last["hash"], int(last["seq"]) + 1
        except (ValueError, KeyError) as exc:
            raise AuditLogError(f"{fh.name}: last line is not a valid entry ({exc}); "
                                "run `vortex audit verify`") from None

    def entries(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)  # never read a line an append is half-way through
            try:
                return [json.loads(line) for line in fh if line.strip()]
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def verify(self) -> AuditVerification:
        """Check every line's hash and link; report the first bad line (1-based)."""
        if not os.path.exists(self.path):
            return AuditVerification(True, 0)
        prev, n = _GENESIS, 0
        with open(self.path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            for n, raw in enumerate(fh, start=1):
                try:
                    e = json.loads(raw)
                    ok_shape = isinstance(e, dict) and {"seq", "ts", "event", "data", "prev", "hash"} <= set(e)
                except ValueError:
                    ok_shape = False
                if not ok_shape:
                    return AuditVerification(False, n - 1, n, "not a JSON audit entry")
                if e["prev"] != prev:
                    return AuditVerification(False, n - 1, n, "prev does not match the previous line's hash "
                                             "(a line was removed, inserted or reordered)")
                if e["seq"] != n - 1:
                    return AuditVerification(False, n - 1, n, f"seq {e['seq']} where {n - 1} was expected")
                if _digest(e) != e["hash"]:
                    return AuditVerification(False, n - 1, n, "hash does not match the content (edited)")
                prev = e["hash"]
        return AuditVerification(True, n)
