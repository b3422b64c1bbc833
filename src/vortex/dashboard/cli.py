"""``vortex dashboard --home H [--host 127.0.0.1] [--port 8765] [--token T]``: serve the
dashboard of a home (see :mod:`vortex.dashboard`) until interrupted.

It prints the URL to open, with the action token in its fragment (browsers never send a
fragment to a server). Without ``--token`` (or ``VORTEX_DASHBOARD_TOKEN``) a random token is
made for this run.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any, TextIO

from .._cli_support import UsageError, command, existing_home

__all__ = [
    "DashboardServer",
    "dashboard_url",
    "port_number",
    "register",
    "serve_dashboard",
    "serve_in_background",
]

DEFAULT_PORT = 8765
#: Names of this machine's loopback interface (no warning when listening there).
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def dashboard_url(host: str, port: int, token: str | None = None) -> str:
    """The page's URL (with the token in the fragment when given)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"#token={token}" if token else "")


class DashboardServer:
    """The dashboard app served by uvicorn in a background thread (``vortex demo --dashboard``).

    Parameters
    ----------
    app
        The ASGI app (:func:`vortex.dashboard.dashboard_app`).
    host, port
        Where to listen (port 0: any free port; :attr:`port` is the one bound once started).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        import uvicorn

        self.app, self.host = app, host
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                     lifespan="off"))
        self._thread: threading.Thread | None = None
        self.port = port

    def start(self, timeout: float = 10.0) -> DashboardServer:
        """Start serving; returns once the socket listens (RuntimeError if it cannot)."""
        self._thread = threading.Thread(target=self._server.run, name="vortex-dashboard", daemon=True)
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive() or waited > timeout:
                raise RuntimeError(f"the dashboard could not listen on {self.host}:{self.port}")
            threading.Event().wait(0.05)
            waited += 0.05
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        """The page's URL with the token."""
        return dashboard_url(self.host, self.port, self.app.state.token)

    def wait(self) -> None:
        """Block until the server stops."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def serve_in_background(home: str, live: Any = None, host: str = "127.0.0.1",
                        port: int = DEFAULT_PORT, token: str | None = None) -> DashboardServer:
    """The dashboard of ``home`` served from a thread of this process (``vortex demo
    --dashboard``); ``live`` as in :func:`vortex.dashboard.dashboard_app`. Stop it with
    :meth:`DashboardServer.stop`."""
    from .app import dashboard_app

    # (IPv6 literals cannot be listed: Starlette's host check cuts the Host header at its first colon)
    hosts = ("127.0.0.1", "localhost") if host in ("127.0.0.1", "localhost") else None
    return DashboardServer(dashboard_app(home, token=token, live=live, allowed_hosts=hosts),
                           host, port).start()


def serve_dashboard(home: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    token: str | None = None, out: TextIO = sys.stdout) -> int:
    """Serve the dashboard of ``home`` until interrupted (the ``vortex dashboard`` command).

    Prints the URL (with the port actually bound, and the token) once it listens."""
    server = serve_in_background(existing_home(home), host=host, port=port, token=token)
    print(f"Vortex dashboard of {os.path.abspath(home)}\n  open {server.url}\n"
          f"  actions need the token: {server.app.state.token}", file=out, flush=True)
    if host not in LOOPBACK_NAMES:
        print(f"  WARNING: listening on {host}: anyone who can reach it sees this home's state",
              file=out, flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("VORTEX_DASHBOARD_TOKEN") or None
    if token is not None and len(token) < 8:
        raise UsageError("--token: must be at least 8 characters")
    return serve_dashboard(args.home, args.host, args.port, token)


def port_number(text: str) -> int:
    """A TCP port number (0: any free port), for argparse."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def register(subparsers: Any) -> None:
    """Add ``vortex dashboard`` to the ``vortex`` command's subparsers."""
    p = subparsers.add_parser("dashboard", help="serve a live web dashboard of a home",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=".vortex", help="Vortex home directory (default .vortex)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--token", default=None,
                   help="the token actions need (default: $VORTEX_DASHBOARD_TOKEN, else a random one)")
    command(p, _run)
