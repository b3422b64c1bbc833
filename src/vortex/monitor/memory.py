"""The process's real memory pressure: resident memory over the memory it may use.

The limit is the cgroup memory limit when one is set (cgroup v2 ``memory.max`` or v1
``memory.limit_in_bytes``, the tightest along the process's cgroup path), else the machine's
physical RAM (``MemTotal``). Resident memory is read from ``/proc/self/statm`` through a file
descriptor kept open and re-read with ``pread`` (about 1.5 us), so the monitor thread can
sample it on every tick.

Where ``/proc/self/statm`` cannot be read, the current resident memory is unknown: the probe
then returns NaN (no memory-pressure weakness is ever raised) and reports the fallback to
:mod:`vortex.degraded`. The peak resident memory ``getrusage`` offers is no stand-in: it never
falls, so a pressure raised on it could never clear.
"""

from __future__ import annotations

import math
import os
import weakref

from .. import degraded
from .._fast_metrics import statm_resident_pages
from .._native import _core  # noqa: F401  (first, for its actionable error if unbuilt)

__all__ = ["ProcessMemoryProbe", "memory_limit_bytes", "resident_bytes"]

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


def resident_bytes() -> int | None:
    """The process's resident memory now (None where ``/proc/self/statm`` cannot be read)."""
    return _default_probe().rss_bytes()


class ProcessMemoryProbe:
    """Callable returning the process's resident memory over its limit (a fraction), or NaN
    when the resident memory cannot be read (see the module docstring).

    Parameters
    ----------
    limit_bytes
        The limit to divide by; ``None`` reads it once with :func:`memory_limit_bytes`.
    proc
        Where procfs is mounted.
    """

    def __init__(self, limit_bytes: int | None = None, *, proc: str = "/proc") -> None:
        self.limit_bytes = int(limit_bytes) if limit_bytes is not None else memory_limit_bytes(proc=proc)
        if self.limit_bytes <= 0:
            raise ValueError(f"limit_bytes={limit_bytes!r}: must be > 0")
        self._statm = os.path.join(proc, "self", "statm")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._fd: int | None = None
        self._pid = -1
        self._finalizer: weakref.finalize | None = None

    def rss_bytes(self) -> int | None:
        """Resident memory in bytes, or None when it cannot be read."""
        pid = os.getpid()
        if self._pid != pid:  # first use, or we are a forked child: /proc/self was the parent
            self._reopen(pid)
        if self._fd is not None:
            try:
                return statm_resident_pages(self._fd) * self._page
            except (OSError, ValueError, IndexError) as exc:
                self._close()
                self._unavailable(f"cannot read {self._statm}: {exc}")
        return None

    def _reopen(self, pid: int) -> None:
        self._close()
        self._pid = pid
        try:
            self._fd = os.open(self._statm, os.O_RDONLY)
        except OSError as exc:
            self._unavailable(f"cannot open {self._statm}: {exc.strerror or exc}")
            return
        self._finalizer = weakref.finalize(self, os.close, self._fd)

    def _close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._fd = self._finalizer = None

    @staticmethod
    def _unavailable(cause: str) -> None:
        degraded.report("memory probe", "memory-pressure detection off (the current resident "
                        "memory is unknown)", f"{cause}; the peak resident memory getrusage "
                        "offers never falls, so a pressure raised on it could never clear")

    def __call__(self) -> float:
        """The resident memory over ``limit_bytes`` now, or NaN when it cannot be read.

        The detector calls it on every pass and every stats read, so the usual case reads the
        already open ``statm`` inline; a first call, a forked child or a failed read goes
        through :meth:`rss_bytes`, which (re)opens the file or reports the fallback.
        """
        fd = self._fd
        if fd is not None and self._pid == os.getpid():  # the common case, inlined
            try:
                return statm_resident_pages(fd) * self._page / self.limit_bytes
            except (OSError, ValueError):
                pass
        rss = self.rss_bytes()
        return math.nan if rss is None else rss / self.limit_bytes


_DEFAULT: ProcessMemoryProbe | None = None


def _default_probe() -> ProcessMemoryProbe:
    global _DEFAULT  # noqa: PLW0603 - one probe per process, created on first use
    if _DEFAULT is None:
        _DEFAULT = ProcessMemoryProbe()
    return _DEFAULT
