"""The dashboard as an ASGI application: :func:`dashboard_app`.

Routes (relative to wherever it is mounted: ``/`` standalone, ``/vortex/ui/`` in a service)::

    GET  /                                   the page (it polls api/state every second)
    GET  /api/state                          everything shown, as JSON (see vortex.dashboard.state)
    POST /api/proposals/{id}/{action}        approve | reject | rollback   {"by", "reason"}
    POST /api/models/{version}/swap          serve that version            {"by", "expect_active"}
    POST /api/models/rollback                back to the previous version  {"by", "expect_active"}
    GET  /static/...                         the script, the style sheet, Chart.js (vendored)

Every POST must carry the token in the ``X-Vortex-Token`` header and a JSON body (403 / 415
otherwise). Browsers send neither cross-site without a CORS preflight, which this app never
grants; a request whose ``Origin`` (or ``Sec-Fetch-Site``) shows another site is refused too.
The page keeps the token in the tab's session storage, read once from the URL's fragment
(``#token=...``, never sent to a server) or typed in. Errors come back as
``{"error": <one line>}`` with 400 (bad input), 403, 404 (unknown id or version), 409 (the state
changed: a stale proposal or view) or 500 (a damaged file, named), never a traceback.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .state import HomeView, LiveStatus

__all__ = ["TOKEN_HEADER", "dashboard_app"]

log = logging.getLogger(__name__)

#: Header that carries the action token.
TOKEN_HEADER = "X-Vortex-Token"
_STATIC = Path(__file__).with_name("static")
_MAX_NAME = 100
_SNAPSHOT_TTL = 0.5  # clients polling together share one read of the home
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _RefusedError(Exception):
    """A request refused with an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_of(exc: BaseException) -> int:
    from ..errors import (
        CorruptFileError,
        ProposalNotFoundError,
        ProposalStateError,
        RollbackConflictError,
        VersionNotFoundError,
    )

    if isinstance(exc, _RefusedError):
        return exc.status
    if isinstance(exc, (ProposalNotFoundError, VersionNotFoundError)):
        return 404
    if isinstance(exc, (ProposalStateError, RollbackConflictError)):
        return 409
    if isinstance(exc, CorruptFileError):
        return 500
    return 400 if isinstance(exc, ValueError) else 500


def _message(exc: BaseException) -> str:
    # KeyError subclasses (not-found errors) would print their message quoted
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _same_origin(request: Any) -> bool:
    """Whether the request does not come from another site's page."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by a browser page (curl, a test client)
    host = request.headers.get("host", "")
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == host


def _name(body: dict[str, Any]) -> str:
    by = body.get("by")
    if not isinstance(by, str) or not by.strip() or len(by) > _MAX_NAME or not by.isprintable():
        raise _RefusedError(400, f"by={by!r}: give your name (1 to {_MAX_NAME} printable characters); "
                            "it is recorded in the audit log")
    return by.strip()


def _version(text: Any, what: str) -> int | None:
    if text is None:
        return None
    if isinstance(text, bool) or not (isinstance(text, int) or (isinstance(text, str) and text.isdigit())):
        raise _RefusedError(400, f"{what}={text!r} is not a version number")
    value = int(text)
    if value < 1:
        raise _RefusedError(400, f"{what}={text!r}: versions start at 1")
    return value


def _expected(body: dict[str, Any]) -> int | None:
    """The version the person saw serving (null: none), which a swap must still find serving."""
    if "expect_active" not in body:
        raise _RefusedError(400, "expect_active: give the version you saw serving (null if none), so "
                            "that a swap made meanwhile is not overridden")
    return _version(body["expect_active"], "expect_active")


def dashboard_app(home: str | os.PathLike[str], *, token: str | None = None,
                  live: LiveStatus | None = None, allowed_hosts: Sequence[str] | None = None,
                  registry: str | None = None, storage_options: Mapping[str, Any] | None = None,
                  debug: bool = False) -> Any:
    """The dashboard of ``home`` as a Starlette (ASGI) application.

    Parameters
    ----------
    home
        The Vortex home to show (it must exist); everything is read from disk.
    token
        The secret every action must carry (``X-Vortex-Token``); default: a new random one.
        The app's ``state.token`` holds it (print it for the person who will act).
    live
        Optional callable returning ``Orchestrator.system_status().to_dict()`` of a service in
        this process, for the figures that are never written to disk (see
        :mod:`vortex.dashboard.state`).
    registry, storage_options
        The model registry to show and swap on when it is not the home's ``models`` directory:
        a directory or an fsspec URL (a fleet's shared registry, ``ServiceSpec.registry_url``)
        and its client options. Swaps are audited in ``home`` either way.
    allowed_hosts
        Host names the app answers to (others get 400), against DNS rebinding: a page of
        another site whose name resolves to 127.0.0.1 would otherwise read the state. Default:
        any (the service it is mounted in checks its own hosts); ``vortex dashboard`` passes
        the loopback names when it listens on loopback.
    debug
        Starlette's debug mode (tracebacks in error pages); never in production.

    Returns
    -------
    starlette.applications.Starlette
        Mount it anywhere (``Mount("/vortex/ui", app=dashboard_app(...))``) or serve it alone.

    Raises
    ------
    FileNotFoundError
        ``home`` is not a directory.
    ValueError
        ``token`` is shorter than 8 characters.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import (
        FileResponse,
        JSONResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from ..errors import VortexError
    from .actions import act_on_proposal, swap_model

    home = os.fspath(home)
    if not os.path.isdir(home):
        raise FileNotFoundError(f"no Vortex home at {home!r}")
    if token is None:
        token = secrets.token_urlsafe(18)
    if not isinstance(token, str) or len(token) < 8:
        raise ValueError("token: must be a string of at least 8 characters")
    view = HomeView(home, live, registry, storage_options)
    cache: dict[str, Any] = {"at": 0.0, "state": None}

    def error(exc: BaseException) -> Response:
        status = _status_of(exc)
        if status == 500:
            log.warning("dashboard action failed: %s", exc, exc_info=not isinstance(exc, _RefusedError))
        return JSONResponse({"error": _message(exc)}, status_code=status, headers=_HEADERS)

    async def page(request: Request) -> Response:
        if not request.url.path.endswith("/"):  # relative links need the trailing slash
            return RedirectResponse(request.url.replace(path=request.url.path + "/"), status_code=307)
        return FileResponse(_STATIC / "index.html", headers=_HEADERS)

    def snapshot() -> dict[str, Any]:
        if cache["state"] is None or time.monotonic() - cache["at"] > _SNAPSHOT_TTL:
            cache["state"], cache["at"] = view.snapshot(), time.monotonic()
        return cache["state"]

    async def state(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(snapshot), headers=_HEADERS)

    async def checked_body(request: Request) -> dict[str, Any]:
        """The JSON body of an action that passed the cross-site and token checks."""
        if not _same_origin(request):
            raise _RefusedError(403, "cross-site request refused")
        given = request.headers.get(TOKEN_HEADER.lower(), "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _RefusedError(403, f"missing or wrong token ({TOKEN_HEADER} header): actions need "
                                "the token printed when the dashboard started")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _RefusedError(415, "send the action as JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except ValueError:
            raise _RefusedError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _RefusedError(400, "the body must be a JSON object")
        return body

    async def run(fn: Any, *args: Any) -> Response:
        try:
            result = await run_in_threadpool(fn, *args)
        except (VortexError, ValueError, OSError) as exc:  # one line for the page (as the CLI)
            return error(exc)
        cache["state"] = None  # the next poll shows the change
        return JSONResponse({"ok": True, **result}, headers=_HEADERS)

    async def proposal_action(request: Request) -> Response:
        try:
            body = await checked_body(request)
            by = _name(body)
            action = request.path_params["action"]
            reason = body.get("reason") or ""
            if not isinstance(reason, str):
                raise _RefusedError(400, f"reason={reason!r} must be text")
        except _RefusedError as exc:
            return error(exc)
        return await run(act_on_proposal, home, request.path_params["id"], action, by, reason)

    async def model_swap(request: Request) -> Response:
        try:
            body = await checked_body(request)
            by = _name(body)
            version = _version(request.path_params["version"], "version")
            expect = _expected(body)
        except _RefusedError as exc:
            return error(exc)
        return await run(swap_model, home, version, by, expect, registry, storage_options)

    async def model_rollback(request: Request) -> Response:
        try:
            body = await checked_body(request)
            by = _name(body)
            expect = _expected(body)
            models = (await run_in_threadpool(snapshot))["models"]
            if not models or models["rollback_to"] is None:
                raise _RefusedError(409, "there is no earlier version to roll back to")
        except _RefusedError as exc:
            return error(exc)
        return await run(swap_model, home, models["rollback_to"], by, expect, registry, storage_options)

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404,
                            headers=_HEADERS)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"},
                            status_code=405, headers=_HEADERS)

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("dashboard: unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"},
                            status_code=500, headers=_HEADERS)

    routes = [
        Route("/", page),
        Route("/api/state", state),
        Route("/api/proposals/{id}/{action:str}", proposal_action, methods=["POST"]),
        Route("/api/models/rollback", model_rollback, methods=["POST"]),
        Route("/api/models/{version}/swap", model_swap, methods=["POST"]),
        Mount("/static", StaticFiles(directory=_STATIC)),
    ]
    middleware = [] if allowed_hosts is None else [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
    app = Starlette(debug=debug, routes=routes, middleware=middleware,
                    exception_handlers={404: not_found, 405: method_not_allowed, 500: internal})
    app.state.token = token
    app.state.home = home
    app.state.view = view
    return app
