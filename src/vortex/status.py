"""What a Vortex home directory holds, read from disk (``vortex status`` shows it).

It works on a home whether or not a service is running on it: the model registry and its
serving log, the proposals and their statuses, the audit log's integrity, the last training
runs, the buffered samples saved last, and the fallbacks the last process on the home took
because its environment lacked something (``degraded``, see :mod:`vortex.degraded`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .home import HomeLayout

if TYPE_CHECKING:
    from .training.registry import ModelRegistry

__all__ = ["home_status", "open_registry"]


def open_registry(home: str, registry: str | None = None,
                  storage_options: Mapping[str, Any] | None = None) -> ModelRegistry | None:
    """The model registry of ``home``: ``registry`` (a directory or an fsspec URL, the shared
    registry of a fleet) or the home's ``models`` directory; None when the home has none.
    """
    from .training.registry import ModelRegistry

    if registry is None:
        registry = HomeLayout(home).models
        if not os.path.isdir(registry):
            return None
    return ModelRegistry(registry, storage_options=dict(storage_options or {}))


def home_status(home: str | os.PathLike[str], registry: str | None = None,
                storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything persisted under ``home``, as JSON-ready data; the model registry's figures
    from ``registry`` when it is not the home's own (:func:`open_registry`).

    Reads only: nothing is created under ``home``.

    Raises
    ------
    FileNotFoundError
        ``home`` is not a directory.
    vortex.errors.CorruptFileError
        A file under ``home`` is damaged (the error names it).
    """
    home = os.fspath(home)
    layout = HomeLayout(home)
    if not layout.exists():
        raise FileNotFoundError(f"no Vortex home at {home!r}")
    out: dict[str, Any] = {"home": os.path.abspath(home)}

    reg = open_registry(home, registry, storage_options)
    if reg is not None:
        versions = reg.list_versions()
        out["models"] = {"active_version": reg.active_version, "versions": len(versions),
                         "latest": versions[-1] if versions else None,
                         "swaps": len(reg.serving_log())}
    else:
        out["models"] = None

    if os.path.isdir(layout.rsi):
        from .rsi.audit import AuditLog
        from .rsi.proposal import ProposalStore

        has_proposals = os.path.isdir(layout.proposals)
        proposals = ProposalStore(home).list() if has_proposals else []
        audit = AuditLog(layout.audit, layout.audit_head).verify()
        out["proposals"] = dict(Counter(p.status.value for p in proposals))
        out["audit"] = {"ok": audit.ok, "entries": audit.entries,
                        "first_bad_line": audit.first_bad_line, "reason": audit.reason}
    else:
        out["proposals"] = out["audit"] = None

    runs_path = layout.runs_file
    if os.path.exists(runs_path):
        runs = _read_runs(runs_path)
        out["training"] = {"runs": len(runs), "by_status": dict(Counter(r["status"] for r in runs)),
                           "last": runs[-1] if runs else None}
    else:
        out["training"] = None

    from .degraded import read_record

    out["degraded"] = read_record(home)

    buffer_path = layout.buffer
    if os.path.exists(buffer_path):
        from .training.buffer import Snapshot

        out["buffered_samples"] = len(Snapshot.read_ipc(buffer_path))
    else:
        out["buffered_samples"] = 0
    return out


def _read_runs(path: str) -> list[dict[str, Any]]:
    """The training runs recorded in ``runs.json``: a list of objects with a ``status``."""
    from .errors import CorruptFileError

    try:
        with open(path, encoding="utf-8") as f:
            runs = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(path, f"not valid JSON ({exc})",
                               remedy="it only records past runs; move it aside") from None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("status"), str)
                                             for r in runs):
        raise CorruptFileError(path, "not a list of training runs with a status",
                               remedy="it only records past runs; move it aside")
    return runs
