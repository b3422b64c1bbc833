"""Serving the dashboard of a home over HTTP (see :mod:`vortex.dashboard`): in a background
thread (``vortex demo --dashboard``) or in the foreground until interrupted (``vortex dashboard``,
whose command line is :mod:`vortex.cli.dashboard`).

:func:`serve_dashboard` prints the URL to open, with the action token in its fragment (browsers never send a
fragment to a server). Without ``--token`` (or ``VORTEX_DASHBOARD_TOKEN``) a random token is
made for this run.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = [
    "DashboardServer",
    "dashboard_url",
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

    def _listen(self) -> socket.socket:
        """Bind and listen here rather than in uvicorn: a port in use is then an OSError naming
        it (uvicorn logs and exits the process), and :attr:`port` is known at once.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            raise OSError(exc.errno, f"the dashboard could not listen on {self.host}:{self.port}: "
                                     f"{exc.strerror}") from exc
        self.port = sock.getsockname()[1]
        return sock

    def start(self, timeout: float = 10.0) -> DashboardServer:
        """Start serving from a background thread; returns once it serves.

        Raises
        ------
        OSError
            The socket could not be bound, or the server did not start within ``timeout``.
        """
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._listen()]},
                                        name="vortex-dashboard", daemon=True)
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive() or waited > timeout:
                raise OSError(f"the dashboard could not start serving on {self.host}:{self.port}")
            threading.Event().wait(0.05)
            waited += 0.05
        return self

    def run(self, on_listening: Callable[[], None]) -> None:
        """Serve from this (the main) thread until SIGINT or SIGTERM, then shut down gracefully.

        ``on_listening`` is called once the socket listens (:attr:`port` is then the bound one).
        After the shutdown uvicorn re-raises the signal it caught: SIGINT comes out of here as
        KeyboardInterrupt, SIGTERM ends the process with the signal's default action. Serving
        in the main thread means no thread of the server is left running while the interpreter
        exits (a daemon thread inside native code then is how processes crash at exit).

        Raises
        ------
        OSError
            The socket could not be bound.
        """
        sock = self._listen()
        on_listening()
        try:
            self._server.run(sockets=[sock])
        finally:
            self.close()

    @property
    def url(self) -> str:
        """The page's URL with the token."""
        return dashboard_url(self.host, self.port, self.app.state.token)

    def wait(self) -> None:
        """Block until the server stops."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop serving, wait for the thread, and close what the app holds open."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.close()

    def close(self) -> None:
        """Unmap the shared-memory segments the app's view reads (the server must be stopped)."""
        view = getattr(self.app.state, "view", None)
        if view is not None:
            view.close()


def _server_of(home: str, host: str, port: int, token: str | None, live: Any = None,
               **registry: Any) -> DashboardServer:
    from .app import dashboard_app

    # (IPv6 literals cannot be listed: Starlette's host check cuts the Host header at its first colon)
    hosts = ("127.0.0.1", "localhost") if host in ("127.0.0.1", "localhost") else None
    return DashboardServer(dashboard_app(home, token=token, live=live, allowed_hosts=hosts, **registry),
                           host, port)


def serve_in_background(home: str, live: Any = None, host: str = "127.0.0.1",
                        port: int = DEFAULT_PORT, token: str | None = None) -> DashboardServer:
    """The dashboard of ``home`` served from a thread of this process (``vortex demo
    --dashboard``); ``live`` as in :func:`vortex.dashboard.dashboard_app`. Stop it with
    :meth:`DashboardServer.stop`.
    """
    return _server_of(home, host, port, token, live).start()


def serve_dashboard(home: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    token: str | None = None, out: TextIO = sys.stdout, registry: str | None = None,
                    storage_options: Mapping[str, Any] | None = None) -> int:
    """Serve the dashboard of ``home`` in the foreground until SIGINT (then return 0) or
    SIGTERM (then the process ends by that signal, after the same graceful shutdown): the
    ``vortex dashboard`` command. ``registry``, ``storage_options``: as in
    :func:`vortex.dashboard.dashboard_app`.

    Prints the URL (with the port actually bound, and the token) once it listens.
    """
    server = _server_of(home, host, port, token, registry=registry, storage_options=storage_options)

    def announce() -> None:
        print(f"Vortex dashboard of {os.path.abspath(home)}\n  open {server.url}\n"
              f"  actions need the token: {server.app.state.token}", file=out, flush=True)
        if host not in LOOPBACK_NAMES:
            print(f"  WARNING: listening on {host}: anyone who can reach it sees this home's state",
                  file=out, flush=True)

    try:
        server.run(announce)
    except KeyboardInterrupt:
        pass
    return 0
