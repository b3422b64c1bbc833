"""Checks from outside the RSI sandbox, shared by tests/rsi/test_sandbox.py and the red-team
suite (tests/rsi/redteam/): what the host's process table, kernel settings and file system show.

Hostile candidates tag what they start with a per-test token: as their process name (``comm``,
which forked children inherit), in their environment (which executed children inherit) or on
their command line, so leftovers are found by that token and not by guesses about uids or
namespaces (other sandboxes may run on a shared machine at the same time).
"""

from __future__ import annotations

import os
import secrets
import time


def new_token() -> str:
    """14 characters: it fits a process name (15)."""
    return "vx" + secrets.token_hex(6)


def processes_with(token: str) -> list[int]:
    """Live (non-zombie) processes whose name, command line or environment contains ``token``."""
    found = []
    needle = token.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
            if stat[stat.rindex(b")") + 2:].split()[0] in (b"Z", b"X"):
                continue
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                seen = fh.read()
            with open(f"/proc/{name}/comm", "rb") as fh:
                seen += fh.read()
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    seen += fh.read()
            except OSError:
                pass
        except (OSError, ValueError):
            continue
        if needle in seen:
            found.append(int(name))
    return found


def processes_with_settled(token: str, wait: float = 0.0) -> list[int]:
    """:func:`processes_with`, giving the kernel ``wait`` seconds to finish reaping."""
    deadline = time.monotonic() + wait
    left = processes_with(token)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_with(token)
    return left


def sysv_shm_keys() -> set[str]:
    """Keys of the host's SysV shared memory segments."""
    with open("/proc/sysvipc/shm") as fh:
        return {line.split()[0] for line in fh.readlines()[1:] if line.strip()}


def read_host(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()
