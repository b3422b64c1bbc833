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


def autogroup(pid: int | str) -> tuple[str, int] | None:
    """``(name, nice)`` of the autogroup of ``pid``'s session, or None for the kernel's default
    group: the file reads empty for a process whose session never left init's (no ``setsid``
    between it and PID 1, as under some CI runners), a group whose nice cannot be set.
    """
    with open(f"/proc/{pid}/autogroup") as f:
        text = f.read().split()
    if not text:
        return None
    name, _, nice = text
    return name, int(nice)
