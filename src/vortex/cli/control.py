"""``vortex control --spec pkg.module:SPEC [--home H]``: run a served model's control plane."""

from __future__ import annotations

import argparse
from typing import Any

from .common import command

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from ..serving.control import run_control
    from ..serving.spec import load_spec

    spec = load_spec(args.spec)
    if args.home is not None:
        spec = spec.with_home(args.home)
    return run_control(spec, nice=args.nice)


def register(subparsers: Any) -> None:
    """Add ``vortex control`` to the ``vortex`` command's subparsers."""
    parser = subparsers.add_parser("control", help="run the control plane of a served model's home "
                                   "(waits while another process holds it)")
    parser.add_argument("--spec", required=True, help="the service: 'package.module:SPEC'")
    parser.add_argument("--home", default=None, help="the Vortex home (default: the spec's)")
    parser.add_argument("--nice", type=int, default=10, choices=range(20), metavar="0..19",
                        help="niceness added to the control plane's threads, so that the serving "
                             "processes win the CPU (default: 10)")
    command(parser, _run)
