"""The serving log: one checksummed JSON line per swap or rollback (``serving_log.jsonl``).

The log is the single source of truth of what served when: the active version is the
``to_version`` of its last entry.  It is append-only, so a swap costs one small write whatever
the history's length.  Each line is the entry's JSON with the CRC-32 of that JSON as a last
field, and names the version the line before it made active (a missing or reordered line
shows).

A writer killed mid-line leaves a last line without its newline that fails (or lacks) its
checksum: readers ignore it and the next append overwrites it, so a crash leaves the log before
or after the entry.  A last line whose checksum verifies but whose newline is missing is a
complete entry (the newline is the last byte of the same write, or was lost to damage later):
it is believed, and the next append adds the newline first.  A log cut short at a line
boundary reads as the log before the cut-off lines: an append-only log cannot tell that from a
crash before those appends (each append is made durable before its swap is acknowledged, so
only a damaged disk can cut it).

How the bytes reach storage (a ``pwrite`` under a lock, or a whole-object put) is the store's
business (:mod:`.store`); this module only reads and writes the format.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from collections.abc import Mapping
from typing import Any

from ...errors import RegistryCorruptError

__all__ = ["LOG_COLUMNS", "LOG_NAME", "LEGACY_LOG_NAME", "read_legacy_log", "log_entry",
           "log_line", "parse_log"]

#: Columns of the serving log.
LOG_COLUMNS: tuple[str, ...] = ("time", "from_version", "to_version", "reason")
#: File name of the serving log inside a registry.
LOG_NAME = "serving_log.jsonl"
#: The serving log's earlier format (an Arrow IPC file rewritten on every swap); read when
#: there is no JSON log yet, folded into it by the first swap, then removed.
LEGACY_LOG_NAME = "serving_log.arrow"

# A checksummed serving-log line is its entry's JSON with this field added last.
_LOG_CRC = re.compile(rb',"crc32":"([0-9a-f]{8})"\}')
_LOG_LINE_START = b'{"time":'


def read_legacy_log(data: bytes, path: str) -> list[dict[str, Any]]:
    """The entries of a legacy ``serving_log.arrow`` (its bytes)."""
    import pyarrow as pa

    from .schema import META_REMEDY, decode_ipc

    schema = pa.schema([("time", pa.float64()), ("from_version", pa.int64()),
                        ("to_version", pa.int64()), ("reason", pa.string())])
    table = decode_ipc(data, path)
    if not table.schema.equals(schema):
        raise RegistryCorruptError(path, f"has schema {table.schema}, expected {schema}",
                                   remedy=META_REMEDY)
    return table.to_pylist()


def log_entry(entries: list[dict[str, Any]], version: int, reason: str,
               at: float | None) -> dict[str, Any]:
    """The serving-log entry that makes ``version`` active after ``entries``."""
    return {"time": float(time.time() if at is None else at),
            "from_version": entries[-1]["to_version"] if entries else None,
            "to_version": version, "reason": reason}


def log_line(entry: Mapping[str, Any]) -> bytes:
    """One serving-log line: the entry's JSON with the CRC-32 of that JSON as a last field."""
    body = json.dumps({k: entry[k] for k in LOG_COLUMNS}, separators=(",", ":"),
                      allow_nan=False).encode()
    return body[:-1] + b',"crc32":"%08x"}\n' % zlib.crc32(body)


def _log_corrupt(path: str, number: int, offset: int, problem: str) -> RegistryCorruptError:
    return RegistryCorruptError(
        path, f"line {number} {problem}", position=offset,
        remedy=(f"restore the file from a backup, or keep only its first {number - 1} lines "
                f"(the registry then serves what it served before line {number}) and check "
                f"with `vortex models log`"))


def _parse_log_line(line: bytes, path: str, number: int, offset: int,
                    checked: bool) -> tuple[dict[str, Any], bool]:
    """The entry of one complete line and whether it carried a checksum.

    ``checked``: an earlier line had one, so this one must too (every writer since the first
    checksummed line wrote them; only logs written before checksums existed lack them).
    """
    m = _LOG_CRC.search(line)
    has_crc = m is not None and m.end() == len(line)
    if has_crc:
        body = line[:m.start()] + b"}"
        if zlib.crc32(body) != int(m[1], 16):
            raise _log_corrupt(path, number, offset, "fails its checksum")
    elif checked or m is not None:
        raise _log_corrupt(path, number, offset, "has no valid checksum, unlike the lines before it"
                           if checked else "is damaged")
    else:
        body = line
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise _log_corrupt(path, number, offset, f"is not JSON ({exc})") from exc
    if not _is_entry(raw):
        raise _log_corrupt(path, number, offset, f"is not a serving-log entry: {line[:120]!r}")
    return {**raw, "time": float(raw["time"])}, has_crc


def _is_entry(raw: Any) -> bool:
    """True if ``raw`` (parsed JSON) has exactly the fields and types of a serving-log entry."""
    def integer(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return (isinstance(raw, dict) and raw.keys() == set(LOG_COLUMNS)
            and (integer(raw["time"]) or isinstance(raw["time"], float)) and math.isfinite(raw["time"])
            and (raw["from_version"] is None or integer(raw["from_version"]))
            and integer(raw["to_version"]) and isinstance(raw["reason"], str))


def parse_log(data: bytes, path: str) -> tuple[list[dict[str, Any]], int, bytes, bool]:
    """The entries of serving-log bytes, where the next append goes, what it must start with
    (a newline if the last entry lost its own) and whether a torn last line was ignored.

    Raises :class:`RegistryCorruptError` for a damaged line.
    """
    entries: list[dict[str, Any]] = []
    checked = False
    offset = 0
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or a line without its newline
    m = _LOG_CRC.search(tail)
    whole = m is not None and m.end() == len(tail)
    if whole:  # a whole checksummed entry whose newline alone is missing: parsed as a line
        lines.append(tail)
    for number, line in enumerate(lines, 1):
        entry, has_crc = _parse_log_line(line, path, number, offset, checked)
        if has_crc and entries and entry["from_version"] != entries[-1]["to_version"]:
            raise _log_corrupt(path, number, offset,
                               f"says version {entry['from_version']} was active before it, but "
                               f"line {number - 1} made version {entries[-1]['to_version']} "
                               "active: a line is missing or damaged")
        checked |= has_crc
        entries.append(entry)
        offset += len(line) + 1
    if whole:
        return entries, len(data), b"\n", False  # the next append restores the newline first
    if not tail:
        return entries, offset, b"", False
    # A writer killed mid-line leaves a prefix of a line: no checksum field yet, and it starts
    # like every line. Anything else in the tail is damage, not a torn write.
    if m is not None or not (tail.startswith(_LOG_LINE_START) or _LOG_LINE_START.startswith(tail)):
        raise _log_corrupt(path, len(lines) + 1, offset, f"is damaged: {tail[:120]!r}")
    return entries, offset, b"", True
