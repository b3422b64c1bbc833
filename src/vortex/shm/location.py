"""Where a home's shared-memory segments live: the one place that names those paths.

A worker's segment is a file ``worker-<pid>-<start ticks>-<segment id>.seg`` in the directory
:func:`segment_dir` gives for its home, next to the control plane's ``fleet-state.json``.

Why ``/dev/shm`` and not the home: a segment is written on every request, through a shared
mapping. On tmpfs that is plain memory. On a disk file system the kernel writes dirty pages
back every few seconds, write-protects them to track the next change (a page fault on the
request path), and on devices that need stable pages makes a write wait for the write-back:
milliseconds added to a request. Surviving a reboot is not needed (the workers die with it),
and a dead worker's segment stays in tmpfs until the control plane has read and folded it.
The directory is named after the home's real path, so every process that opens the same home
finds the same segments, and two homes never share one. Where ``/dev/shm`` is missing or not
writable (some sandboxes), the segments go to ``<home>/shm`` instead: correct, just slower.
Processes in separate containers must share ``/dev/shm`` (same pod, or a shared memory
volume) to see each other's segments.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from ..errors import VortexError

__all__ = [
    "SEGMENT_SUFFIX",
    "STATE_NAME",
    "SegmentDirError",
    "ensure_private_dir",
    "parse_segment_name",
    "segment_dir",
    "segment_name",
]

SHM_ROOT = "/dev/shm"
SEGMENT_SUFFIX = ".seg"
STATE_NAME = "fleet-state.json"
_NAME_RE = re.compile(r"^worker-(?P<pid>\d+)-(?P<start>\d+)-(?P<id>[0-9a-f]{16})\.seg$")


class SegmentDirError(VortexError, PermissionError):
    """The segment directory is not a private directory of this user (a symlink, another
    owner, writable by others): refused, since its segments would be readable or replaceable by
    someone else.
    """


def segment_dir(home: str | os.PathLike[str]) -> Path:
    """The directory of the shared-memory segments of ``home`` (not created here).

    ``/dev/shm/vortex-<first 16 hex digits of sha256(real path of home)>``, or
    ``<home>/shm`` where ``/dev/shm`` is not a writable directory (see the module docstring).
    """
    real = os.path.realpath(os.fspath(home))
    if os.path.isdir(SHM_ROOT) and os.access(SHM_ROOT, os.W_OK | os.X_OK):
        key = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return Path(SHM_ROOT) / f"vortex-{key}"
    return Path(real) / "shm"


def segment_name(pid: int, start_ticks: int, segment_id: int) -> str:
    """The file name of a segment: its writer (pid and kernel start time) and a random id."""
    return f"worker-{pid}-{start_ticks}-{segment_id:016x}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, int, int] | None:
    """``(pid, start_ticks, segment_id)`` of a segment file name, or None for any other name."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m["pid"]), int(m["start"]), int(m["id"], 16)


def ensure_private_dir(path: Path, *, create: bool) -> bool:
    """Check that ``path`` is a real directory owned by this user and writable by no one else,
    creating it (mode 0700) when ``create``; False if it does not exist (and was not created).

    ``/dev/shm`` is shared by every user of the machine and the name is predictable, so a
    directory someone else prepared there (or a symlink to elsewhere) is refused with
    :class:`SegmentDirError` rather than used.
    """
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:  # <home>/shm of a home that does not exist yet
            os.makedirs(path, 0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise SegmentDirError(f"{path}: not a directory (a symlink or a file is refused)")
    if st.st_uid != os.geteuid():
        raise SegmentDirError(f"{path}: owned by uid {st.st_uid}, not this user ({os.geteuid()})")
    if st.st_mode & 0o022:
        raise SegmentDirError(f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")
    return True
