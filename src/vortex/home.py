"""The layout of a Vortex home: every file and folder under it has its name here, and only here.

::

    <home>/
      models/                 ModelRegistry (its own files: versions.arrow, serving_log.jsonl,
                              v<N>.safetensors; see vortex.training.registry)
      runs/                   one directory per training run (snapshot, worker logs, outputs)
      runs.json               history of training runs
      buffer.arrow            the persisted sample buffer
      degraded.json           fallbacks in effect in the last process (vortex status)
      control.lock            held (flock) by the one control plane of the home
      control.json            the control plane's published status (workers serve it)
      shm/                    shared-memory segments of serving workers, only where /dev/shm
                              is unusable (else /dev/shm/vortex-<hash of the home's path>)
      rsi/
        proposals/            one sealed JSON file per proposal
        audit.jsonl           hash-chained audit log
        audit.head            the chain's head, where a truncation of the log shows
        journal/              write-ahead journals of applies and rollbacks
        applied/              records of applied proposals (originals, hashes)
        apply.lock            serialises applies and rollbacks across processes
        memory.json           tunable moves that failed (not proposed again)

A component that owns a folder (the registry, the applier) may name the files inside it; no
other module spells a path under a home.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

__all__ = ["HomeLayout"]

_RUN_DIR = re.compile(r"^run-\d+-(\d+)$")  # run-<run id>-<pid of the coordinator>


@dataclass(frozen=True)
class HomeLayout:
    """Paths under the home ``root`` (nothing is created; see :meth:`exists`).

    Parameters
    ----------
    root
        The home directory, as given (relative paths stay relative).
    """

    root: str

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", os.fspath(root))

    def _at(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def exists(self) -> bool:
        """Whether the home directory exists."""
        return os.path.isdir(self.root)

    # -- training
    @property
    def models(self) -> str:
        """The default model registry (``BackgroundTrainingConfig.checkpoint_dir`` overrides)."""
        return self._at("models")

    @property
    def runs(self) -> str:
        """Folder of the training runs' working directories."""
        return self._at("runs")

    def run_dir(self, run_id: int, pid: int) -> str:
        """Working directory of run ``run_id`` started by process ``pid``."""
        return self._at("runs", f"run-{run_id:06d}-{pid}")

    @staticmethod
    def run_owner(name: str) -> int | None:
        """The pid that started the run whose directory is called ``name`` (None: not a run's)."""
        m = _RUN_DIR.match(name)
        return int(m.group(1)) if m else None

    @property
    def nodes(self) -> str:
        """Folder of the working directories of this machine's nodes of runs started by
        another machine's coordinator (``vortex training join``).
        """
        return self._at("nodes")

    @property
    def runs_file(self) -> str:
        """History of training runs (JSON)."""
        return self._at("runs.json")

    @property
    def buffer(self) -> str:
        """The persisted sample buffer (Arrow IPC, sealed)."""
        return self._at("buffer.arrow")

    # -- process state
    @property
    def degraded(self) -> str:
        """Fallbacks in effect in the last process that ran on this home."""
        return self._at("degraded.json")

    @property
    def control_lock(self) -> str:
        """Lock file whose ``flock`` elects the home's one control plane (vortex.serving)."""
        return self._at("control.lock")

    @property
    def control_status(self) -> str:
        """The control plane's published status (sealed JSON), read by serving workers."""
        return self._at("control.json")

    @property
    def shm(self) -> str:
        """Folder of the serving workers' shared-memory segments: in ``/dev/shm``, named after
        this home's real path, or ``<home>/shm`` where ``/dev/shm`` is not usable (the reasons
        are in :mod:`vortex.shm.location`).
        """
        from .shm.location import segment_dir

        return os.fspath(segment_dir(self.root))

    # -- self-modification
    @property
    def rsi(self) -> str:
        """State of the RSI engine."""
        return self._at("rsi")

    @property
    def proposals(self) -> str:
        """One sealed JSON file per proposal."""
        return self._at("rsi", "proposals")

    @property
    def audit(self) -> str:
        """The hash-chained audit log."""
        return self._at("rsi", "audit.jsonl")

    @property
    def audit_head(self) -> str:
        """The audit chain's head (seq and hash of the last entry)."""
        return self._at("rsi", "audit.head")

    @property
    def journal(self) -> str:
        """Write-ahead journals of applies and rollbacks in progress."""
        return self._at("rsi", "journal")

    @property
    def applied(self) -> str:
        """Records of applied proposals."""
        return self._at("rsi", "applied")

    @property
    def apply_lock(self) -> str:
        """Lock file serialising applies and rollbacks across processes."""
        return self._at("rsi", "apply.lock")

    @property
    def rsi_memory(self) -> str:
        """Tunable moves that failed, per weakness kind."""
        return self._at("rsi", "memory.json")
