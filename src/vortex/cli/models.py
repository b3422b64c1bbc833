"""``vortex models``: inspect and operate the model registry from the command line.

::

    vortex models --home .vortex list [--json]        versions with losses, accuracy, status
    vortex models --home .vortex log [--json]         serving log: every swap and rollback
    vortex models --home .vortex at 2026-11-25T03:00  which version served at that time
    vortex models --home .vortex swap 3 [--reason R]  make version 3 the active one
    vortex models --home .vortex cleanup --keep 5 [--max-age-days 30]
    vortex models --home .vortex pin 3 / unpin 3     keep version 3 whatever cleanup is asked
    vortex models --home .vortex verify               check every file; list every problem
    vortex models --registry s3://bucket/home/models --storage-options '{"endpoint_url": ...}' list

``swap`` records the new active version in the registry; a running
:class:`~vortex.training.BackgroundTrainingCoordinator` on the same home (and every serving
worker following it) notices it within a second and serves it (its weights are verified and
warmed up first). ``swap``, ``pin``, ``unpin`` and ``cleanup`` on a home's registry are written
to the home's audit log with the user who ran them, as the dashboard's swaps are; a registry
named by ``--registry`` alone has no home, hence no audit log.

``--registry`` takes a directory or an fsspec URL (``s3://...``: the registry of replicas on
several machines); its client options come from ``--storage-options`` (JSON) or fsspec's own
configuration (e.g. ``FSSPEC_S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import getpass
import math
import os
import sys
from typing import Any

from ..home import HomeLayout
from .common import (
    HOME,
    JSON,
    REGISTRY,
    STORAGE_OPTIONS,
    Group,
    emit,
    non_negative_int,
    point_in_time,
    positive_float,
    positive_int,
    registry_root,
)

__all__ = ["register"]


def _registry(args: argparse.Namespace) -> Any:
    from ..training.registry import ModelRegistry

    return ModelRegistry(registry_root(args), storage_options=args.storage_options)


def _audit(args: argparse.Namespace, event: str, **fields: Any) -> None:
    """Record an operator's change of the home's registry in the home's audit log (nothing
    for a registry named by ``--registry``: it belongs to no home).
    """
    if args.registry:
        return
    from ..rsi.audit import AuditLog

    layout = HomeLayout(args.home)
    os.makedirs(layout.rsi, exist_ok=True)
    AuditLog(layout.audit, layout.audit_head).append(event, by=f"cli:{_user()}", **fields)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (a container)
        return f"uid {os.getuid()}"


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="seconds")


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _cell(value: Any, spec: str) -> str:
    """A metadata value as ``vortex models list`` shows it (spec from :class:`VersionMeta`)."""
    if isinstance(value, bool):
        return "yes" if value else "-"
    return _iso(value) if spec == "time" else _fmt(value, spec or ".4f")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    from ..training.registry.schema import Column, VersionMeta

    reg = _registry(args)
    rows = reg.list_versions()
    columns = list(VersionMeta.columns())
    # pinned is kept beside the table, not in a row: shown after the leading columns
    columns.insert(sum(c.header in ("version", "status") for c in columns), Column("pinned", "pinned"))
    text = _table([c.header for c in columns],
                  [[_cell(r[c.name], c.format) for c in columns] for r in rows])
    log = reg.serving_log()
    text += f"\n\nactive version: {reg.active_version}\n\n" + _log_text(log[-10:])
    emit(args, {"active_version": reg.active_version, "versions": rows, "serving_log": log}, text)
    return 0


def _log_text(entries: list[dict[str, Any]]) -> str:
    return "serving log:\n" + _table(["time (UTC)", "from", "to", "reason"], [
        [_iso(e["time"]), _fmt(e["from_version"]), str(e["to_version"]), e["reason"]] for e in entries])


def _log(args: argparse.Namespace) -> int:
    entries = _registry(args).serving_log()
    emit(args, entries, _log_text(entries))
    return 0


def _at(args: argparse.Namespace) -> int:
    t = args.time
    v = _registry(args).version_at(t)
    emit(args, {"time": t, "version": v}, f"version serving at {_iso(t)}: {_fmt(v)}")
    return 0


def _swap(args: argparse.Namespace) -> int:
    reg = _registry(args)
    previous = reg.active_version
    if not reg.set_active(args.target_version, args.reason, expect_active=previous):
        from ..errors import ModelSwapError

        raise ModelSwapError(f"version {reg.active_version} became active meanwhile, not "
                           f"{previous}: nothing was changed; look again and retry")
    _audit(args, "model_swapped", from_version=previous, to_version=args.target_version,
           reason=args.reason)
    emit(args, {"from_version": previous, "to_version": args.target_version, "reason": args.reason},
           f"active version: {previous} -> {args.target_version} ({args.reason})")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    removed = _registry(args).cleanup(args.keep, args.max_age_days)
    if removed:
        _audit(args, "models_removed", versions=removed, keep=args.keep,
               max_age_days=args.max_age_days)
    emit(args, {"removed": removed}, f"removed versions: {removed or 'none'}")
    return 0


def _pin(args: argparse.Namespace) -> int:
    reg = _registry(args)
    (reg.pin if args.pin else reg.unpin)(args.target_version)
    _audit(args, "model_pinned" if args.pin else "model_unpinned", version=args.target_version)
    emit(args, {"pinned": reg.pinned()},
           f"version {args.target_version} {'pinned' if args.pin else 'unpinned'}; "
           f"pinned versions: {reg.pinned() or 'none'}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Every damaged file of the registry (metadata, serving log, each version's weights);
    exit status 1 when there is any, with a one-line summary on stderr.
    """
    from ..training.registry import ModelRegistry, verify_registry

    root = registry_root(args)
    problems = verify_registry(root, storage_options=args.storage_options)
    damaged = {p.path for p in problems}
    versions: dict[int, str] = {}
    if not {os.path.basename(p) for p in damaged} & {"versions.arrow", "serving_log.jsonl"}:
        reg = ModelRegistry(root, storage_options=args.storage_options)
        versions = {v: "damaged" if reg.weights_path(v) in damaged else "ok" for v in reg.versions()}
    report = {"ok": not problems, "versions": versions,
              "problems": [{"path": p.path, "problem": p.problem, "position": p.position,
                            "remedy": p.remedy, "message": str(p)} for p in problems]}
    lines = [f"version {v}: {state}" for v, state in versions.items()]
    lines += [f"DAMAGED {p}" for p in problems]
    emit(args, report, "\n".join(lines) or "no versions")
    if problems:
        print(f"{args.command_name}: error: {len(problems)} damaged file(s): "
              + ", ".join(sorted(damaged)), file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``vortex models`` to the ``vortex`` command's subparsers."""
    group = Group(subparsers, "models", "list, swap and clean up model versions",
                  options=(HOME, REGISTRY, STORAGE_OPTIONS, JSON), description=(__doc__ or "").split("\n\n")[0])
    group.action("list", _list, "versions, metrics and the recent serving log")
    group.action("log", _log, "the whole serving log")
    at = group.action("at", _at, "which version served at a time (ISO 8601 UTC or unix seconds)")
    at.add_argument("time", type=point_in_time)
    swap = group.action("swap", _swap, "make a version the active one (roll back or forward)")
    # "version" would clash with vortex --version
    swap.add_argument("target_version", type=positive_int, metavar="VERSION")
    swap.add_argument("--reason", default="manual (vortex models swap)")
    clean = group.action("cleanup", _cleanup, "remove old versions (never the active one)")
    clean.add_argument("--keep", type=non_negative_int, default=5,
                       help="keep this many newest versions")
    clean.add_argument("--max-age-days", type=positive_float, default=None)
    for name, pin, what in (("pin", True, "keep a version whatever cleanup is asked"),
                            ("unpin", False, "let cleanup remove a pinned version again")):
        group.action(name, _pin, what, pin=pin).add_argument(
            "target_version", type=positive_int, metavar="VERSION")
    group.action("verify", _verify, "check every file (metadata, serving log, each version's "
                                    "sha256) and list every problem")
