"""What every ``vortex`` command shares: options, output, one-line errors, exit statuses.

A command group is ``vortex <group> [OPTIONS] ACTION [OPTIONS]``: :class:`Group` declares its
shared options (:data:`HOME`, :data:`JSON`, or its own :class:`Option`) once and accepts them
before or after the action. :func:`emit` prints a result as text, or as JSON under ``--json``.

A command's error is one line on stderr, ``<command>: error: <message naming the bad value>``
(with ``--json``, also ``{"error": ..., "message": ...}`` on stdout), and its exit status says
whose it is:

* **2, usage**: a bad argument value. argparse's own errors, the argument types below, and
  :class:`UsageError` raised by a handler.
* **1, state**: the command was fine but what it found was not: no home, a corrupt file, a
  proposal or version that does not exist, a state that forbids the operation. Any
  :class:`vortex.errors.VortexError`, ``OSError`` or other ``ValueError`` out of a handler.

Anything else escaping a handler is a bug in Vortex and keeps its traceback.

Read-only commands never create anything: they call :func:`existing_home` (and
:func:`existing_dir` for what they read below it) before opening a store.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..errors import VortexError

__all__ = [
    "HOME",
    "JSON",
    "REGISTRY",
    "STATE",
    "STORAGE_OPTIONS",
    "USAGE",
    "Group",
    "Option",
    "Parser",
    "UsageError",
    "command",
    "directory",
    "emit",
    "existing_dir",
    "existing_home",
    "non_negative_int",
    "point_in_time",
    "positive_float",
    "positive_int",
    "registry_root",
    "run_command",
]

USAGE = 2
STATE = 1

Handler = Callable[[argparse.Namespace], "int | None"]


class UsageError(Exception):
    """A bad command-line value found by a handler (exit status 2); the message names it."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        """Exit with status 2 and ``message`` as one line on stderr."""
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Option:
    """An option a command group shares between itself and each of its actions.

    Parameters
    ----------
    flags
        The option strings, e.g. ``("--home",)``.
    kwargs
        What ``ArgumentParser.add_argument`` takes besides the flags (``default``, ``help``...).
    """

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def add_to(self, parser: argparse.ArgumentParser, *, suppressed: bool = False) -> None:
        """Add the option to ``parser``; ``suppressed``: with no default of its own.

        An action's copy of a group option is suppressed: argparse then sets it only when it is
        given after the action, and otherwise keeps the value parsed before it (or the
        group's default).
        """
        kwargs = {**self.kwargs, "default": argparse.SUPPRESS} if suppressed else self.kwargs
        parser.add_argument(*self.flags, **kwargs)


HOME = Option(("--home",), {"default": ".vortex", "help": "Vortex home directory (default .vortex)"})
JSON = Option(("--json",), {"action": "store_true", "help": "machine-readable output"})


def _storage_options(text: str) -> dict[str, Any]:
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise argparse.ArgumentTypeError(f"{text!r} must be a JSON object of client options")
    return options


#: A model registry elsewhere than the home's ``models`` directory (read by :func:`registry_root`).
REGISTRY = Option(("--registry",), {"default": None,
                                    "help": "registry directory or fsspec URL (overrides the home's)"})
STORAGE_OPTIONS = Option(("--storage-options",), {
    "default": None, "type": _storage_options, "metavar": "JSON",
    "help": "client options of a --registry URL, e.g. '{\"endpoint_url\": \"http://...\"}'"})


class Group:
    """The command group ``vortex <name> ACTION``; its options go before or after ACTION.

    Parameters
    ----------
    subparsers
        The ``vortex`` parser's subparsers (what a command module's ``register`` receives).
    name, help
        The group's name and its one-line help.
    options
        The options every action of the group takes (default :data:`HOME` and :data:`JSON`).
    description
        The group's ``--help`` text (default ``help``).
    """

    def __init__(self, subparsers: Any, name: str, help: str, *,
                 options: Sequence[Option] = (HOME, JSON), description: str | None = None) -> None:
        self.parser: argparse.ArgumentParser = subparsers.add_parser(
            name, help=help, description=description or help)
        self.options = tuple(options)
        for option in self.options:
            option.add_to(self.parser)
        self._actions = self.parser.add_subparsers(dest=f"{name}_command", metavar="ACTION",
                                                   required=True)

    def action(self, name: str, handler: Handler, help: str,
               **defaults: Any) -> argparse.ArgumentParser:
        """Add the action ``name`` run by ``handler``; returns its parser for its own arguments.

        ``defaults`` are set on the parsed arguments (one handler can serve several actions).
        """
        parser = self._actions.add_parser(name, help=help, description=help)
        for option in self.options:
            option.add_to(parser, suppressed=True)
        command(parser, handler, **defaults)
        return parser


def command(parser: argparse.ArgumentParser, handler: Handler, **defaults: Any) -> None:
    """Make ``parser`` (a leaf subcommand) run ``handler`` through :func:`run_command`."""
    parser.set_defaults(handler=handler, command_name=parser.prog, **defaults)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print a command's result: ``data`` as JSON under ``--json``, else ``text``."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.handler(args)``; turn a usage or state error into one line and its status."""
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        return _fail(args, exc, USAGE)
    except (VortexError, ValueError, OSError) as exc:
        return _fail(args, exc, STATE)


def _fail(args: argparse.Namespace, exc: BaseException, status: int) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever it held
    if getattr(args, "json", False):
        print(json.dumps({"error": type(exc).__name__, "message": message}))
    print(f"{getattr(args, 'command_name', 'vortex')}: error: {message}", file=sys.stderr)
    return status


def existing_home(path: str) -> str:
    """``path`` if it is a directory; else FileNotFoundError "no Vortex home at '<path>'"."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no Vortex home at {path!r}")
    return path


def existing_dir(path: str, what: str) -> str:
    """``path`` if it is a directory; else FileNotFoundError naming ``what`` and the path."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no {what} at {path!r}")
    return path


def registry_root(args: argparse.Namespace) -> str:
    """The directory or URL of the registry a command names (``--registry``, else the home's
    ``models``); it must exist (no command creates one).
    """
    from .._fsspec import is_url
    from ..home import HomeLayout

    if not args.registry:
        return existing_dir(HomeLayout(existing_home(args.home)).models, "model registry")
    if not is_url(args.registry):
        return existing_dir(args.registry, "model registry")
    from ..training.registry.store import open_store

    if not open_store(args.registry, args.storage_options).names():
        raise FileNotFoundError(f"no model registry at {args.registry!r}")
    return str(args.registry)


# -- argument types: argparse reports their ArgumentTypeError as a usage error (exit 2) --------

def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _int(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= {lo}")
        return value

    parse.__doc__ = f"An integer >= {lo}."
    return parse


non_negative_int = _int_at_least(0)
positive_int = _int_at_least(1)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return value


def point_in_time(text: str) -> float:
    """Unix seconds, or an ISO 8601 time (UTC unless it names its zone)."""
    try:
        value = float(text)
    except ValueError:
        try:
            when = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither unix seconds nor an ISO 8601 time such as "
                "2026-11-25T03:00") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.UTC)
        return when.timestamp()
    try:  # the times the output can print
        _dt.datetime.fromtimestamp(value, _dt.UTC)
    except (OverflowError, OSError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a representable time") from None
    return value


def directory(text: str) -> str:
    """An existing directory."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return text
