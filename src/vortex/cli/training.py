"""``vortex training join``: a machine's share of training runs spread over several machines.

::

    vortex training join --run-url s3://bucket/runs [--storage-options JSON] [--home .vortex]
                         [--poll-secs 1] [--once] [--json]

Run it on every machine but the coordinator's when ``BackgroundTrainingConfig.distributed``
has a ``run_url``: it polls that URL for the ``launch.json`` of a new run and starts this
machine's ``torchrun`` node of it (see :mod:`vortex.training.multinode`), in
``<home>/nodes/<rendezvous id>`` where its log stays, until interrupted (SIGINT, SIGTERM: a
running node is killed), or after one node with ``--once`` (exit status 0 if it succeeded,
else 1). Each node's outcome is printed (a JSON object a line with ``--json``).
``--storage-options`` reaches both the run URL and the model registry.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

from .common import HOME, JSON, STORAGE_OPTIONS, Group, Option, UsageError, positive_float

__all__ = ["register"]

_STORAGE_OPTIONS = Option(STORAGE_OPTIONS.flags, {
    **STORAGE_OPTIONS.kwargs, "help": "client options of the run URL and of the registry, "
                                      "e.g. '{\"endpoint_url\": \"http://...\"}'"})


def _print(args: argparse.Namespace, outcome: dict[str, Any]) -> None:
    import json

    if args.json:
        print(json.dumps(outcome), flush=True)
    else:
        print(f"{outcome['rdzv_id']}: {'ok' if outcome['ok'] else outcome['error']} "
              f"(log {outcome['log']})", flush=True)


def _join(args: argparse.Namespace) -> int:
    from .._fsspec import is_url
    from ..home import HomeLayout
    from ..training.multinode import join

    if args.run_url is None:  # not argparse's required=True: every action parses with its options alone
        raise UsageError("--run-url is required: the coordinator's distributed.run_url")
    if not is_url(args.run_url):
        raise UsageError(f"--run-url {args.run_url!r}: must be a URL of the shared storage every "
                         "machine reaches (s3://...), as the coordinator's distributed.run_url")
    work_dir = HomeLayout(args.home).nodes
    os.makedirs(work_dir, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return join(args.run_url, args.storage_options, work_dir, once=args.once,
                    poll_secs=args.poll_secs, stop=stop, report=lambda outcome: _print(args, outcome))
    except ValueError as exc:  # fsspec: an unknown protocol, bad client options
        raise UsageError(f"--run-url {args.run_url!r}: {exc}") from exc


def register(subparsers: Any) -> None:
    """Add ``vortex training`` to the ``vortex`` command's subparsers."""
    group = Group(subparsers, "training", "training runs over several machines",
                  options=(HOME, JSON, _STORAGE_OPTIONS))
    join = group.action("join", _join, "start this machine's torchrun node of each new run of --run-url "
                        "(node directories and logs: <home>/nodes)")
    join.add_argument("--run-url", help="the coordinator's distributed.run_url (required)")
    join.add_argument("--poll-secs", type=positive_float, default=1.0,
                      help="how often to look for a new run (default 1 s)")
    join.add_argument("--once", action="store_true", help="exit after one node")
