"""``vortex status``: what a Vortex home directory holds (:func:`vortex.status.home_status`).

It works on a home whether or not a service is running on it; it reads only. A fleet's home
has no ``models`` directory: ``--registry s3://... [--storage-options JSON]`` names the fleet's
shared registry.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import HOME, JSON, REGISTRY, STORAGE_OPTIONS, command, emit, existing_home, registry_root

__all__ = ["register"]


def _text(s: dict[str, Any]) -> str:
    lines = [f"home: {s['home']}"]
    m = s["models"]
    lines.append("models: none" if m is None else
                 f"models: {m['versions']} versions, active v{m['active_version']}, "
                 f"{m['swaps']} serving-log entries")
    if s["proposals"] is not None:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(s["proposals"].items())) or "none"
        a = s["audit"]
        lines.append(f"proposals: {counts}")
        lines.append(f"audit log: {'intact' if a['ok'] else 'BROKEN at line ' + str(a['first_bad_line'])}"
                     f", {a['entries']} entries")
    t = s["training"]
    if t is not None:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(t["by_status"].items()))
        lines.append(f"training runs: {t['runs']} ({counts})")
    lines.append(f"buffered samples: {s['buffered_samples']}")
    d = s["degraded"]
    if d is not None:
        who = f"process {d['pid']}, {'running' if d['process_running'] else 'no longer running'}"
        lines.append(f"degraded: none (recorded by {who})" if not d["fallbacks"] else
                     f"degraded (recorded by {who}):" + "".join(f"\n  {f['component']}: {f['fallback']}; "
                                                    f"cause: {f['cause']}" for f in d["fallbacks"]))
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from ..status import home_status

    existing_home(args.home)
    registry = registry_root(args) if args.registry else None
    status = home_status(args.home, registry, args.storage_options)
    emit(args, status, _text(status))
    return 0 if status["audit"] is None or status["audit"]["ok"] else 1


def register(subparsers: Any) -> None:
    """Add ``vortex status`` to the ``vortex`` command's subparsers."""
    parser = subparsers.add_parser("status", help="what a Vortex home directory holds")
    for option in (HOME, REGISTRY, STORAGE_OPTIONS, JSON):
        option.add_to(parser)
    command(parser, _run)
