"""Exceptions raised by Vortex.

Every error the library raises on purpose derives from :class:`VortexError`, so a
service can catch Vortex's failures without catching its own.  Bad argument values
raise the built-in :class:`ValueError` (as NumPy and the standard library do) and
bad configuration raises :class:`ConfigError`, which is also a ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "AppliedRecordCorruptError",
    "AuditLogError",
    "ChecksumMismatchError",
    "ConfigError",
    "ConfigKeyError",
    "CoreNotBuiltError",
    "CorruptFileError",
    "JournalCorruptError",
    "ModelSwapError",
    "PatchError",
    "ProposalCorruptError",
    "ProposalNotFoundError",
    "ProposalStateError",
    "RSIError",
    "RegistryCorruptError",
    "RegistryError",
    "RollbackConflictError",
    "SandboxError",
    "SegmentCorruptError",
    "SnapshotFormatError",
    "TrainingError",
    "TreeChangedError",
    "UnknownRequestError",
    "VersionNotFoundError",
    "VortexError",
]


class VortexError(Exception):
    """Base class of every error Vortex raises on purpose."""


class ConfigError(VortexError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    The message names the field (``RuntimeDetectorConfig.window_size``) and the value.
    """


class ConfigKeyError(ConfigError, TypeError):
    """A configuration keyword is not a field (``RuntimeDetectorConfig(windw_size=5)``).

    The message names the keyword and the nearest field. It is also a ``TypeError``, the error
    Python raises for an unexpected keyword argument, so code written against that keeps
    working.
    """


class CorruptFileError(VortexError):
    """A file Vortex wrote does not hold what Vortex wrote (bit rot, truncation, tampering).

    Every corruption error derives from this class. The message names the file, the position
    where it is known, and what to do about it (restore from where, or which command repairs
    it); the same facts are kept as attributes for programs.

    Parameters
    ----------
    path
        The damaged file.
    problem
        What is wrong, in a few words ("line 7 fails its checksum").
    position
        Byte offset or 1-based line number of the damage, when known.
    remedy
        What the user can do about it.
    """

    def __init__(self, path: object, problem: str, *, position: int | None = None,
                 remedy: str | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.position = position
        self.remedy = remedy
        where = f" (at {position})" if position is not None else ""
        msg = f"{self.path}: {problem}{where}"
        if remedy:
            msg += f"; {remedy}"
        super().__init__(msg)

    def __reduce__(self) -> tuple:  # keyword-only fields: pickle through the full constructor
        return (_rebuild_corrupt, (type(self), self.path, self.problem, self.position, self.remedy))


def _rebuild_corrupt(cls: type[CorruptFileError], path: str, problem: str, position: int | None,
                     remedy: str | None) -> CorruptFileError:
    err = cls.__new__(cls)
    CorruptFileError.__init__(err, path, problem, position=position, remedy=remedy)
    return err


class CoreNotBuiltError(VortexError, ImportError):
    """The compiled core ``vortex._core`` could not be imported."""


class SnapshotFormatError(CorruptFileError, ValueError):
    """A persisted buffer or snapshot file is corrupted or does not match the buffer."""


class SegmentCorruptError(CorruptFileError):
    """A worker's shared-memory segment (``vortex.shm``) is not a whole segment of this format:
    a damaged or truncated header, a record that fails its checksum, counters that contradict
    the rings. Other workers' segments are unaffected.
    """


class TrainingError(VortexError):
    """A background training run failed (worker crashed, timed out or diverged)."""


class RegistryError(VortexError):
    """The model registry is unreadable or an operation on it is not possible."""


class RegistryCorruptError(RegistryError, CorruptFileError):
    """A registry file (``versions.arrow``, ``serving_log.jsonl``) does not hold what Vortex wrote."""


class ChecksumMismatchError(RegistryError, CorruptFileError):
    """A stored model's bytes do not match the sha256 recorded for it (or are missing)."""


class VersionNotFoundError(RegistryError, KeyError):
    """No model version with that number exists in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ModelSwapError(VortexError):
    """A model could not be loaded, warmed up or swapped in; the old one keeps serving."""


class RSIError(VortexError):
    """Base class of self-modification errors."""


class PatchError(RSIError):
    """A diff is malformed, escapes the target tree or does not apply."""


class SandboxError(RSIError):
    """The sandbox itself could not be set up (not a failing test: that is a TestResult)."""


class ProposalNotFoundError(RSIError, KeyError):
    """No proposal with that id exists."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ProposalStateError(RSIError):
    """The proposal is not in a state that allows this operation (e.g. apply before test)."""


class RollbackConflictError(RSIError):
    """A file changed since the proposal was applied, so rolling back would lose that change."""


class TreeChangedError(PatchError):
    """The target tree is not the one a proposal was tested against; nothing was applied.

    The engine re-tests the proposal on the current tree before applying it.
    """


class AuditLogError(CorruptFileError, RSIError):
    """The audit log (or its head file) is damaged: a line fails its hash or link, or the log
    is shorter than its recorded head (truncated).
    """


class ProposalCorruptError(CorruptFileError, RSIError):
    """A stored proposal file fails its checksum, or its diff is not the diff it recorded."""


class JournalCorruptError(CorruptFileError, RSIError):
    """A journal of the RSI apply fails its checksums: recovery wrote nothing from it, moved it
    aside, and applies are refused until a person has checked the tree files it names.
    """


class AppliedRecordCorruptError(CorruptFileError, RSIError):
    """An applied record (``applied/<id>.json``, the originals a rollback restores) fails its
    checksums; the rollback is refused and nothing is changed.
    """


class UnknownRequestError(VortexError, KeyError):
    """Feedback names a request id that is unknown or has expired from the pending table."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
