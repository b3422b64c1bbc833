"""The process's real memory pressure: resident memory over the memory it may use.

The limit is the cgroup memory limit when one is set (cgroup v2 ``memory.max`` or v1
``memory.limit_in_bytes``, the tightest along the process's cgroup path), else the machine's
physical RAM (``MemTotal``). Resident memory is read from ``/proc/self/statm`` through a file
descriptor kept open and re-read with ``pread`` (about 1.5 us), so the monitor thread can
sample it on every tick.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import weakref

from .._native import _core  # noqa: F401  (first, for its actionable error if unbuilt)
from .._fast_metrics import statm_resident_pages

__all__ = ["ProcessMemoryProbe", "memory_limit_bytes", "resident_bytes"]

logger = logging.getLogger(__name__)

# Limits at or above this are "no limit" (cgroup v1 reports ~2**63 rounded to a page).
_UNLIMITED = 1 << 60


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _UNLIMITED else None


def _physical_ram(proc: str) -> int:
    try:
        with open(os.path.join(proc, "meminfo"), encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cgroup_limits(cgroup_root: str, proc: str) -> list[int]:
    """Every memory limit set on the process's cgroup and its ancestors (v1 and v2)."""
    try:
        with open(os.path.join(proc, "self", "cgroup"), encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    candidates: list[str] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.strip("/")
        if controllers == "":  # cgroup v2 (unified); also mounted at <root>/unified in hybrid mode
            for base in (cgroup_root, os.path.join(cgroup_root, "unified")):
                candidates += _ancestors(base, rel, "memory.max")
        elif "memory" in controllers.split(","):
            candidates += _ancestors(os.path.join(cgroup_root, "memory"), rel,
                                     "memory.limit_in_bytes")
    limits = []
    for path in candidates:
        value = _read_int(path)
        if value is not None:
            limits.append(value)
    return limits


def _ancestors(base: str, rel: str, name: str) -> list[str]:
    # In a container the cgroup path is often not visible under the mount (namespaced root),
    # so the mount root itself is always a candidate too.
    parts = [p for p in rel.split("/") if p]
    return [os.path.join(base, *parts[:i], name) for i in range(len(parts), -1, -1)]


def memory_limit_bytes(cgroup_root: str = "/sys/fs/cgroup", proc: str = "/proc") -> int:
    """The memory this process may use: the tightest cgroup limit, else physical RAM."""
    ram = _physical_ram(proc)
    return min([ram, *_cgroup_limits(cgroup_root, proc)])


def resident_bytes() -> int:
    """The process's resident memory now (peak resident memory where /proc is unavailable)."""
    return _default_probe().rss_bytes()


class ProcessMemoryProbe:
    """Callable returning the process's resident memory over its limit (a fraction).

    Parameters
    ----------
    limit_bytes
        The limit to divide by; ``None`` reads it once with :func:`memory_limit_bytes`.
    """

    def __init__(self, limit_bytes: int | None = None) -> None:
        self.limit_bytes = int(limit_bytes) if limit_bytes is not None else memory_limit_bytes()
        if self.limit_bytes <= 0:
            raise ValueError(f"limit_bytes={limit_bytes!r}: must be > 0")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._fd: int | None = None
        self._pid = -1
        self._finalizer: weakref.finalize | None = None

    def rss_bytes(self) -> int:
        """Resident memory in bytes."""
        pid = os.getpid()
        if self._pid != pid:  # first use, or we are a forked child: /proc/self was the parent
            self._reopen(pid)
        if self._fd is not None:
            try:
                return statm_resident_pages(self._fd) * self._page
            except (OSError, ValueError, IndexError):
                logger.warning("cannot read /proc/self/statm; falling back to peak RSS")
                self._fd = None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024

    def _reopen(self, pid: int) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._pid = pid
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None
            self._finalizer = None
            return
        self._finalizer = weakref.finalize(self, os.close, self._fd)

    def __call__(self) -> float:
        fd = self._fd
        if fd is not None and self._pid == os.getpid():  # the common case, inlined
            try:
                return statm_resident_pages(fd) * self._page / self.limit_bytes
            except (OSError, ValueError):
                pass
        return self.rss_bytes() / self.limit_bytes


_DEFAULT: ProcessMemoryProbe | None = None


def _default_probe() -> ProcessMemoryProbe:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ProcessMemoryProbe()
    return _DEFAULT
