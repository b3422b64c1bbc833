"""``vortex demo``: registers the subcommand without importing the demo's heavy modules."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from .run import run_from_args

    return run_from_args(args)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="the end-to-end autonomous demo on scikit-learn's digits",
        description="Serve a digits classifier, drift its inputs, and watch Vortex detect the "
                    "weakness, apply a tested patch to the service, retrain and swap in a "
                    "better model. Prints a timeline; writes report.json and timeline.png.")
    p.add_argument("--home", default="vortex-demo/.vortex",
                   help="state directory (registry, proposals, audit log, service copy)")
    p.add_argument("--out", default="vortex-demo", help="where report.json and timeline.png go")
    p.add_argument("--quick", action="store_true", help="a shorter run (used by the tests)")
    p.add_argument("--keep", action="store_true",
                   help="continue from the state in --home instead of starting afresh")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_run)
