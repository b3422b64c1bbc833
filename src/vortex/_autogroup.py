"""Linux autogroups: why lowering a process's priority can take one more step.

With ``CONFIG_SCHED_AUTOGROUP`` (on by default in most distributions' kernels) every session is
a scheduling group, and the CPU is shared between groups as equals before it is shared inside
them. A niceness or SCHED_IDLE ranks a task only inside its group: a background process that
leads a session of its own competes with the serving processes as an equal whatever its own
priority. Such a process lowers its group instead (it is alone in it, with what it starts).
"""

from __future__ import annotations

import os

__all__ = ["lower_session_group"]

_PATH = "/proc/self/autogroup"


def lower_session_group(nice: int) -> bool:
    """Set this session's autogroup nice to ``nice`` if this process leads the session (never
    a group it shares with the process that started it). True if it did; raises
    :class:`OSError` when the kernel refused.
    """
    if os.getsid(0) != os.getpid() or not os.path.exists(_PATH):
        return False
    with open(_PATH, "w") as f:
        f.write(str(nice))
    return True
