"""vortex: watch, patch and retrain an ML inference service (see the subcommands).

::

    vortex --version
    vortex demo [--quick]                      the end-to-end autonomous demo
    vortex status [--home .vortex] [--json]    what a home directory holds
    vortex proposals list|show|approve|reject|rollback ...
    vortex models list|log|at|swap|cleanup|pin|unpin|verify ...
    vortex audit verify
    vortex control --spec pkg.module:SPEC [--home H]   a served model's control plane
    vortex dashboard [--home .vortex] [--port 8765]     a live web dashboard of a home
    vortex training join --run-url s3://...             this machine's nodes of multi-machine runs

Every command group is one module of this package (``status``, ``audit``, ``proposals``,
``models``, ``demo``, ``control``, ``dashboard``, ``training``) that defines
``register(subparsers)``; :func:`build_parser` finds them
by listing the package, so **adding a command group is adding one module**::

    # src/vortex/cli/buffer.py
    '''``vortex buffer show``: ...'''
    from .common import Group

    def _show(args) -> int:
        from ..training import ...       # the domain code, imported when the command runs
        ...

    def register(subparsers) -> None:
        group = Group(subparsers, "buffer", "the persisted sample buffer")  # --home, --json
        group.action("show", _show, "what it holds").add_argument("--last", type=int)

:mod:`vortex.cli.common` holds what the groups share: the ``--home`` and ``--json`` options
(accepted before or after the action), the output, one-line errors and exit statuses (0 ok,
1 bad state, 2 bad argument). A command module imports its domain package inside its
handlers, so that ``vortex --help`` stays light; domain packages never import this package.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

from .. import __version__
from .common import USAGE, Parser, run_command

__all__ = ["build_parser", "main"]

_NOT_GROUPS = frozenset({"common"})  # modules of this package that are not command groups


def _group_modules() -> list[str]:
    """The names of the command-group modules of this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_GROUPS)


def build_parser() -> argparse.ArgumentParser:
    """The ``vortex`` parser, with every command group of this package registered."""
    parser = Parser(prog="vortex", description=(__doc__ or "").split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _group_modules():
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def _version_line() -> str:
    from .._native import _core

    return f"vortex {__version__} (compiled core {_core.__version__}, {_core.compiler})"


def main(argv: list[str] | None = None) -> int:
    """Run the ``vortex`` command.

    Parameters
    ----------
    argv
        The arguments after ``vortex`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 ok, 1 a bad state, 2 a bad argument.
    """
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
