"""``vortex dashboard --home H [--host 127.0.0.1] [--port 8765] [--token T]``: serve the
live dashboard of a home (:mod:`vortex.dashboard`) until interrupted.

A fleet's home has no ``models`` directory: its registry is on shared storage
(``ServiceSpec.registry_url``); ``--registry s3://... [--storage-options JSON]`` shows and swaps
on that one (swaps are still audited in the home).

It prints the URL to open, with the action token in its fragment (browsers never send a
fragment to a server). Without ``--token`` (or ``VORTEX_DASHBOARD_TOKEN``) a random token is
made for this run.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..dashboard.server import DEFAULT_PORT  # light: uvicorn loads when serving starts
from .common import HOME, REGISTRY, STORAGE_OPTIONS, UsageError, command, existing_home, registry_root

__all__ = ["port_number", "register"]


def port_number(text: str) -> int:
    """A TCP port number (0: any free port), for argparse."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    from ..dashboard.server import serve_dashboard

    token = args.token or os.environ.get("VORTEX_DASHBOARD_TOKEN") or None
    if token is not None and len(token) < 8:
        raise UsageError("--token: must be at least 8 characters")
    home = existing_home(args.home)
    registry = registry_root(args) if args.registry else None
    return serve_dashboard(home, args.host, args.port, token, registry=registry,
                           storage_options=args.storage_options)


def register(subparsers: Any) -> None:
    """Add ``vortex dashboard`` to the ``vortex`` command's subparsers."""
    p = subparsers.add_parser("dashboard", help="serve a live web dashboard of a home",
                              description="Serve the live dashboard of a home until interrupted; "
                                          "actions need the token it prints.")
    HOME.add_to(p)
    REGISTRY.add_to(p)
    STORAGE_OPTIONS.add_to(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--token", default=None,
                   help="the token actions need (default: $VORTEX_DASHBOARD_TOKEN, else a random one)")
    command(p, _run)
