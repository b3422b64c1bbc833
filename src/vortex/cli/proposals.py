"""``vortex proposals list|show|approve|reject|rollback``: the RSI engine's proposals."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..errors import RSIError
from ..home import HomeLayout
from .common import Group, directory, emit, existing_home

__all__ = ["register"]


def _summary(p: Any) -> dict[str, Any]:
    return {"id": p.id, "status": p.status.value, "risk": p.risk.value, "weakness": p.weakness_type,
            "proposer": p.proposer, "description": p.description,
            "passed": (p.test_result or {}).get("passed")}


def _store(home: str) -> Any:
    """The proposal store of an existing home, or None when it never held a proposal (a
    read-only command then creates nothing).
    """
    from ..rsi.proposal import ProposalStore

    if not os.path.isdir(HomeLayout(existing_home(home)).proposals):
        return None
    return ProposalStore(home)


def _list(args: argparse.Namespace) -> int:
    from ..rsi.proposal import ProposalStatus

    store = _store(args.home)
    ps = store.list(ProposalStatus(args.status) if args.status else None) if store else []
    rows = [_summary(p) for p in ps]
    emit(args, rows, "\n".join(f"{r['id']}  {r['status']:<11} {r['risk']:<8} {r['description']}"
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
    emit(args, d, "\n".join(f"{k}: {v}" for k, v in d.items() if k not in ("diff", "test_result"))
         + f"\ntest_result: {json.dumps(d['test_result'], default=str)}\n\n{p.diff}")
    return 0


def _act(args: argparse.Namespace) -> int:
    from ..config import RSIConfig
    from ..rsi.engine import RSIEngine

    p = _get(args.home, args.id)
    engine = RSIEngine(args.root or p.target, args.home, RSIConfig())
    if args.action == "approve":
        p = engine.approve_proposal(args.id, approver=args.approver)
    elif args.action == "reject":
        p = engine.reject_proposal(args.id, args.reason, by=args.approver)
    else:
        p = engine.rollback_proposal(args.id, args.reason or "manual rollback", by=args.approver)
    emit(args, _summary(p), f"{p.id}: {p.status.value}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``vortex proposals`` to the ``vortex`` command's subparsers."""
    from ..rsi.proposal import ProposalStatus

    group = Group(subparsers, "proposals", "list and act on RSI proposals")
    group.action("list", _list, "list proposals").add_argument(
        "--status", choices=[s.value for s in ProposalStatus])
    group.action("show", _show, "one proposal with its diff and test result").add_argument("id")
    for action, help_ in (("approve", "approve and apply (tests first if never tested)"),
                          ("reject", "reject; the direction is not proposed again"),
                          ("rollback", "restore the originals of an applied proposal")):
        p = group.action(action, _act, help_, action=action)
        p.add_argument("id")
        p.add_argument("--root", type=directory,
                       help="target tree (default: the one recorded in the proposal)")
        p.add_argument("--by", dest="approver", default=os.environ.get("USER", "cli"),
                       help="who does it (recorded in the audit log)")
        p.add_argument("--reason", default="")
