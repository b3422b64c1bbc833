"""What another process sees of a process: its ``/proc`` entry, for the tests that check
processes from outside (started, reparented, killed, reaped)."""

from __future__ import annotations


def proc_stat(pid: int | str) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, session, ...
    (FileNotFoundError when the process is gone)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting to be reaped."""
    try:
        return proc_stat(pid)[0] != "Z"
    except FileNotFoundError:
        return False
