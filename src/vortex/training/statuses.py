"""The statuses of a model version and of a training run, as ``str`` enums.

Members compare equal to their values (``VersionStatus.ACTIVE == "active"``), format as them
(``f"{status}"``) and serialise as them in JSON, so files and JSON output written before these
enums existed read the same.
"""

from __future__ import annotations

import enum

__all__ = ["VersionStatus", "RunStatus"]


class VersionStatus(enum.StrEnum):
    """Where a model version stands.

    The registry stores what the trainer decided (:attr:`CANDIDATE` or :attr:`REJECTED`);
    :attr:`ACTIVE` (the served version) and :attr:`RETIRED` (served before) follow from the
    serving log when versions are listed.
    """

    CANDIDATE = "candidate"
    REJECTED = "rejected"
    ACTIVE = "active"
    RETIRED = "retired"

    @classmethod
    def stored(cls) -> tuple[VersionStatus, ...]:
        """The statuses the metadata table holds."""
        return (cls.CANDIDATE, cls.REJECTED)


class RunStatus(enum.StrEnum):
    """How a training run ended (:attr:`RUNNING` while it goes on)."""

    RUNNING = "running"
    #: the candidate validated better and now serves
    SWAPPED = "swapped"
    #: validated, not better enough
    REJECTED = "rejected"
    #: better, but ``auto_swap_models`` is off
    REGISTERED = "registered"
    #: as REGISTERED with ``enable_versioning`` off: not stored
    NOT_KEPT = "not_kept"
    #: too few samples, or training disabled
    SKIPPED = "skipped"
    #: worker error or crash
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
