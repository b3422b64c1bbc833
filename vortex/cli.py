"""The ``vortex`` command."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vortex", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    importlib.import_module("vortex.training.cli").register(subparsers)
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
