"""``vortex audit verify`` and ``vortex proposals list|show|approve|reject|rollback``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .._cli_support import command, directory, existing_home
from ..errors import RSIError
from ..home import HomeLayout

__all__ = ["register"]


def _home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", default=".vortex", help="Vortex home directory (default .vortex)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _out(args: argparse.Namespace, obj: Any, text: str) -> None:
    print(json.dumps(obj, indent=1, default=str) if args.json else text)


def _audit_verify(args: argparse.Namespace) -> int:
    from .audit import AuditLog

    if args.log:
        path = args.log
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no audit log at {path!r}")
    else:
        layout = HomeLayout(existing_home(args.home))
        path, head = layout.audit, layout.audit_head
        if not os.path.isdir(layout.rsi):  # nothing was ever audited here; create nothing
            _out(args, {"path": path, "ok": True, "entries": 0, "first_bad_line": None,
                        "reason": "no RSI activity in this home"},
                 f"{path}: no audit log (no RSI activity in this home)")
            return 0
    v = AuditLog(path, head).verify()
    _out(args, {"path": path, "ok": v.ok, "entries": v.entries, "first_bad_line": v.first_bad_line,
                "reason": v.reason},
         f"{path}: OK, {v.entries} entries" if v.ok else
         f"{path}: BROKEN at line {v.first_bad_line}: {v.reason} ({v.entries} good entries before it)")
    return 0 if v.ok else 1


def _summary(p: Any) -> dict[str, Any]:
    return {"id": p.id, "status": p.status.value, "risk": p.risk.value, "weakness": p.weakness_type,
            "proposer": p.proposer, "description": p.description,
            "passed": (p.test_result or {}).get("passed")}


def _store(home: str) -> Any:
    """The proposal store of an existing home, or None when it never held a proposal (a
    read-only command then creates nothing)."""
    from .proposal import ProposalStore

    if not os.path.isdir(HomeLayout(existing_home(home)).proposals):
        return None
    return ProposalStore(home)


def _list(args: argparse.Namespace) -> int:
    from .proposal import ProposalStatus

    store = _store(args.home)
    ps = store.list(ProposalStatus(args.status) if args.status else None) if store else []
    rows = [_summary(p) for p in ps]
    _out(args, rows, "\n".join(f"{r['id']}  {r['status']:<11} {r['risk']:<8} {r['description']}"
                               for r in rows) or "no proposals")
    corrupt = store.corrupt() if store else []  # listed after the readable ones, then a state error
    if len(corrupt) > 1:
        raise RSIError(f"{len(corrupt)} proposal files are damaged: " + "; ".join(map(str, corrupt)))
    if corrupt:
        raise corrupt[0]
    return 0


def _get(home: str, proposal_id: str) -> Any:
    from ..errors import ProposalNotFoundError

    store = _store(home)
    if store is None:
        raise ProposalNotFoundError(f"no proposal with id {proposal_id!r} (no proposals in {home!r})")
    return store.get(proposal_id)


def _show(args: argparse.Namespace) -> int:
    p = _get(args.home, args.id)
    d = p.to_dict()
    _out(args, d, "\n".join(f"{k}: {v}" for k, v in d.items() if k not in ("diff", "test_result"))
         + f"\ntest_result: {json.dumps(d['test_result'], default=str)}\n\n{p.diff}")
    return 0


def _act(args: argparse.Namespace) -> int:
    from ..config import RSIConfig
    from .engine import RSIEngine

    p = _get(args.home, args.id)
    engine = RSIEngine(args.root or p.target, args.home, RSIConfig())
    if args.action == "approve":
        p = engine.approve_proposal(args.id, approver=args.approver)
    elif args.action == "reject":
        p = engine.reject_proposal(args.id, args.reason, by=args.approver)
    else:
        p = engine.rollback_proposal(args.id, args.reason or "manual rollback", by=args.approver)
    _out(args, _summary(p), f"{p.id}: {p.status.value}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``audit`` and ``proposals`` subcommands to the ``vortex`` parser."""
    from .proposal import ProposalStatus

    audit = subparsers.add_parser("audit", help="audit log tools")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = asub.add_parser("verify", help="check the audit log's hash chain")
    _home(verify)
    verify.add_argument("--log", help="audit log path (default <home>/rsi/audit.jsonl)")
    command(verify, _audit_verify)

    props = subparsers.add_parser("proposals", help="list and act on RSI proposals")
    psub = props.add_subparsers(dest="proposals_command", metavar="ACTION", required=True)
    lst = psub.add_parser("list", help="list proposals")
    _home(lst)
    lst.add_argument("--status", choices=[s.value for s in ProposalStatus])
    command(lst, _list)
    show = psub.add_parser("show", help="one proposal with its diff and test result")
    _home(show)
    show.add_argument("id")
    command(show, _show)
    for action, help_ in (("approve", "approve and apply (tests first if never tested)"),
                          ("reject", "reject; the direction is not proposed again"),
                          ("rollback", "restore the originals of an applied proposal")):
        p = psub.add_parser(action, help=help_)
        _home(p)
        p.add_argument("id")
        p.add_argument("--root", type=directory,
                       help="target tree (default: the one recorded in the proposal)")
        p.add_argument("--by", dest="approver", default=os.environ.get("USER", "cli"),
                       help="who does it (recorded in the audit log)")
        p.add_argument("--reason", default="")
        command(p, _act, action=action)


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main

    sys.exit(main())
