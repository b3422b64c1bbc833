"""``vortex audit verify`` and ``vortex proposals list|show|approve|reject|rollback``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["register"]


def _home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=".vortex", help="Vortex home directory (default .vortex)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _out(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=1, default=str) if args.json else text)


def _audit_verify(args: argparse.Namespace) -> int:
    from .audit import AuditLog

    path = args.log or os.path.join(args.home, "rsi", "audit.jsonl")
    v = AuditLog(path).verify()
    _out(args, {"path": path, "ok": v.ok, "entries": v.entries, "first_bad_line": v.first_bad_line,
                "reason": v.reason},
         f"{path}: OK, {v.entries} entries" if v.ok else
         f"{path}: BROKEN at line {v.first_bad_line}: {v.reason} ({v.entries} good entries before it)")
    return 0 if v.ok else 1


def _summary(p: Any) -> dict[str, Any]:
    return {"id": p.id, "status": p.status.value, "risk": p.risk.value, "weakness": p.weakness_type,
            "proposer": p.proposer, "description": p.description,
            "passed": (p.test_result or {}).get("passed")}


def _list(args: argparse.Namespace) -> int:
    from .proposal import ProposalStatus, ProposalStore

    ps = ProposalStore(args.home).list(ProposalStatus(args.status) if args.status else None)
    rows = [_summary(p) for p in ps]
    _out(args, rows, "\n".join(f"{r['id']}  {r['status']:<11} {r['risk']:<8} {r['description']}"
                               for r in rows) or "no proposals")
    return 0


def _show(args: argparse.Namespace) -> int:
    from .proposal import ProposalStore

    p = ProposalStore(args.home).get(args.id)
    d = p.to_dict()
    _out(args, d, "\n".join(f"{k}: {v}" for k, v in d.items() if k not in ("diff", "test_result"))
         + f"\ntest_result: {json.dumps(d['test_result'], default=str)}\n\n{p.diff}")
    return 0


def _engine(args: argparse.Namespace) -> Any:
    from ..config import RSIConfig
    from .engine import RSIEngine
    from .proposal import ProposalStore

    p = ProposalStore(args.home).get(args.id)
    return RSIEngine(args.root or p.target, args.home, RSIConfig())


def _act(args: argparse.Namespace) -> int:
    from ..errors import RSIError

    try:
        engine = _engine(args)
        if args.action == "approve":
            p = engine.approve_proposal(args.id, approver=args.approver)
        elif args.action == "reject":
            p = engine.reject_proposal(args.id, args.reason, by=args.approver)
        else:
            p = engine.rollback_proposal(args.id, args.reason or "manual rollback", by=args.approver)
    except (RSIError, ValueError) as exc:
        _out(args, {"error": type(exc).__name__, "message": str(exc)}, f"error: {exc}")
        return 1
    _out(args, _summary(p), f"{p.id}: {p.status.value}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``audit`` and ``proposals`` subcommands to the ``vortex`` parser."""
    audit = subparsers.add_parser("audit", help="audit log tools")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = asub.add_parser("verify", help="check the audit log's hash chain")
    _home(verify)
    verify.add_argument("--log", help="audit log path (default <home>/rsi/audit.jsonl)")
    verify.set_defaults(handler=_audit_verify)

    props = subparsers.add_parser("proposals", help="list and act on RSI proposals")
    psub = props.add_subparsers(dest="proposals_command", metavar="ACTION", required=True)
    lst = psub.add_parser("list", help="list proposals")
    _home(lst)
    lst.add_argument("--status", choices=[s for s in ("proposed", "testing", "approved", "applied",
                                                      "rejected", "rolled_back")])
    lst.set_defaults(handler=_list)
    show = psub.add_parser("show", help="one proposal with its diff and test result")
    _home(show)
    show.add_argument("id")
    show.set_defaults(handler=_show)
    for action, help_ in (("approve", "approve and apply (tests first if never tested)"),
                          ("reject", "reject; the direction is not proposed again"),
                          ("rollback", "restore the originals of an applied proposal")):
        p = psub.add_parser(action, help=help_)
        _home(p)
        p.add_argument("id")
        p.add_argument("--root", help="target tree (default: the one recorded in the proposal)")
        p.add_argument("--by", dest="approver", default=os.environ.get("USER", "cli"),
                       help="who does it (recorded in the audit log)")
        p.add_argument("--reason", default="")
        p.set_defaults(handler=_act, action=action)


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main())
