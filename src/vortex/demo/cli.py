"""``vortex demo``: registers the subcommand without importing the demo's heavy modules."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._cli_support import UsageError, command, non_negative_int
from ..dashboard.cli import port_number

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    if not args.keep:
        _check_replaceable(args.home)
    from .run import run_from_args

    return run_from_args(args)


def _check_replaceable(home: str) -> None:
    """A fresh run deletes ``--home`` first: refuse unless it is absent, empty, or an earlier
    demo's (it holds the demo service's copy), so that a mistyped ``--home ~`` deletes nothing."""
    if not os.path.lexists(home):
        return
    if not os.path.isdir(home) or os.path.islink(home):
        raise UsageError(f"--home {home!r} is not a directory")
    from .run import service_tree

    if os.listdir(home) and not (service_tree(home) / "digits_service").is_dir():
        raise UsageError(f"--home {home!r} exists and is not an earlier demo's home; the demo "
                         "would delete it: pick a new directory, or pass --keep")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="the end-to-end autonomous demo on scikit-learn's digits",
        description="Serve a digits classifier, drift its inputs, and watch Vortex detect the "
                    "weakness, apply a tested patch to the service, retrain and swap in a "
                    "better model. Prints a timeline and a checklist of the loop's stages, each "
                    "with its measured figure; writes report.json and timeline.png. Exits 1 "
                    "unless every stage was reached.")
    p.add_argument("--home", default="vortex-demo/.vortex",
                   help="state directory (registry, proposals, audit log, service copy)")
    p.add_argument("--out", default="vortex-demo", help="where report.json and timeline.png go")
    p.add_argument("--quick", action="store_true", help="a shorter run (used by the tests)")
    p.add_argument("--keep", action="store_true",
                   help="continue from the state in --home instead of starting afresh")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--judge-python", metavar="PYTHON", default=None,
                   help="interpreter of the sandbox's test and benchmark runs (default: this one)")
    p.add_argument("--dashboard", nargs="?", const=8765, type=port_number, metavar="PORT",
                   help="serve the live dashboard on 127.0.0.1 during the demo and print its URL "
                        "(default port 8765; 0 picks a free one)")
    command(p, _run)
