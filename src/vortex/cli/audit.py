"""``vortex audit verify``: check the hash chain of a home's RSI audit log."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..home import HomeLayout
from .common import Group, emit, existing_home

__all__ = ["register"]


def _verify(args: argparse.Namespace) -> int:
    from ..rsi.audit import AuditLog

    if args.log:
        path = args.log
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no audit log at {path!r}")
        head = None
    else:
        layout = HomeLayout(existing_home(args.home))
        path, head = layout.audit, layout.audit_head
        if not os.path.isdir(layout.rsi):  # nothing was ever audited here; create nothing
            emit(args, {"path": path, "ok": True, "entries": 0, "first_bad_line": None,
                        "reason": "no RSI activity in this home"},
                 f"{path}: no audit log (no RSI activity in this home)")
            return 0
    v = AuditLog(path, head).verify()
    emit(args, {"path": path, "ok": v.ok, "entries": v.entries, "first_bad_line": v.first_bad_line,
                "reason": v.reason},
         f"{path}: OK, {v.entries} entries" if v.ok else
         f"{path}: BROKEN at line {v.first_bad_line}: {v.reason} ({v.entries} good entries before it)")
    return 0 if v.ok else 1


def register(subparsers: Any) -> None:
    """Add ``vortex audit`` to the ``vortex`` command's subparsers."""
    group = Group(subparsers, "audit", "audit log tools")
    verify = group.action("verify", _verify, "check the audit log's hash chain")
    verify.add_argument("--log", help="audit log path (default <home>/rsi/audit.jsonl)")
