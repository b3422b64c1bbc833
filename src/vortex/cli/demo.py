"""``vortex demo``: the end-to-end loop of :mod:`vortex.demo.run` (imported when it runs)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .common import UsageError, command, non_negative_int
from .dashboard import port_number

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    """Run the demo, print the checklist and how to inspect the result.

    The exit status is 0 only when every stage of the loop was reached.
    """
    if not args.keep:
        _check_replaceable(args.home)
    from ..demo.run import DemoSettings, inspect_commands, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    home, out = Path(args.home), Path(args.out)
    if not args.keep and home.exists():
        shutil.rmtree(home)
    settings = (DemoSettings.quick_settings(home, out) if args.quick
                else DemoSettings(home=home, out_dir=out))
    settings = DemoSettings(**{**settings.__dict__, "seed": args.seed,
                               "judge_python": args.judge_python,
                               "dashboard_port": args.dashboard})
    report = run_demo(settings)
    print(f"\n{report['checklist_text']}")
    print(f"\n{report['requests']} requests in {report['duration_secs']} s; "
          f"report: {out / 'report.json'}, plot: {out / 'timeline.png'}")
    print("\ninspect the result:\n" + "\n".join(f"  {c}" for c in inspect_commands(home)))
    return 0 if report["checklist"]["complete"] else 1


def _check_replaceable(home: str) -> None:
    """A fresh run deletes ``--home`` first: refuse unless it is absent, empty, or an earlier
    demo's (it holds the demo service's copy), so that a mistyped ``--home ~`` deletes nothing.
    """
    if not os.path.lexists(home):
        return
    if not os.path.isdir(home) or os.path.islink(home):
        raise UsageError(f"--home {home!r} is not a directory")
    from ..demo.run import service_tree

    if os.listdir(home) and not (service_tree(home) / "digits_service").is_dir():
        raise UsageError(f"--home {home!r} exists and is not an earlier demo's home; the demo "
                         "would delete it: pick a new directory, or pass --keep")


def register(subparsers: Any) -> None:
    """Add ``vortex demo`` to the ``vortex`` command's subparsers."""
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
