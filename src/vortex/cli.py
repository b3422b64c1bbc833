"""vortex: watch, patch and retrain an ML inference service (see the subcommands).

::

    vortex --version
    vortex demo [--quick]                      the end-to-end autonomous demo
    vortex status [--home .vortex] [--json]    what a home directory holds
    vortex proposals list|show|approve|reject|rollback ...
    vortex models list|log|at|swap|cleanup|verify ...
    vortex audit verify
    vortex control --spec pkg.module:SPEC [--home H]   a served model's control plane
    vortex dashboard [--home .vortex] [--port 8765]   a live web dashboard of a home
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from ._cli_support import USAGE, Parser, run_command


def build_parser() -> argparse.ArgumentParser:
    from .dashboard.cli import register as register_dashboard
    from .demo.cli import register as register_demo
    from .rsi.cli import register as register_rsi
    from .serving.control import register as register_control
    from .status import register as register_status
    from .training.cli import register as register_models

    parser = Parser(prog="vortex", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_demo(sub)
    register_status(sub)
    register_rsi(sub)
    register_models(sub)
    register_control(sub)
    register_dashboard(sub)
    return parser


def _version_line() -> str:
    from ._native import _core

    return f"vortex {__version__} (compiled core {_core.__version__}, {_core.compiler})"


def main(argv: list[str] | None = None) -> int:
    """Run the ``vortex`` command; returns its exit status (0 ok, 1 state error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else USAGE
    if args.version:
        print(_version_line())
        return 0
    if args.command is None:
        parser.print_help()
        return USAGE
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
