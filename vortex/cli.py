"""The ``vortex`` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .rsi.cli import register as _register_rsi


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vortex", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_rsi(sub)
    return parser


def _version_line() -> str:
    from ._native import _core

    return f"vortex {__version__} (compiled core {_core.__version__}, {_core.compiler})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_version_line())
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
