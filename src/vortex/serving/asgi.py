"""ASGI integration: :class:`VortexMiddleware`, :func:`vortex_app` (mount it at ``/vortex``) and
:func:`lifespan`.

::

    service = VortexService(SPEC)
    app = FastAPI(lifespan=lifespan(service))
    app.add_middleware(VortexMiddleware, service=service)

    @app.post("/predict")
    def predict(body: Body):
        p = service.running.infer(np.asarray(body.features, np.float32))
        return {"request_id": p.request_id, "class": p.output}

    app.mount("/vortex", vortex_app(service))  # after the app's routes: tried after them

The middleware is plain ASGI (no ``BaseHTTPMiddleware``, whose per-request task and queue cost
throughput): it takes the request's ``X-Request-ID`` (or mints one), hands it to ``infer``
through a context variable, echoes it in the response, and once the response is sent records
the request into the worker's segment, timed end to end, a 5xx as an error. Works in any
ASGI framework (FastAPI, Starlette, anything that mounts ASGI apps).

Routes of :func:`vortex_app`:

* ``POST /feedback`` ``{"request_id": str, "label": int | float, "episode": int?}``: 200 with
  the prediction error; 400 unreadable JSON or not an object; 404 unknown or expired request
  id; 413 body over 64 KiB; 415 not JSON; 422 a bad or missing field.
* ``GET /status``: this worker, its role, and the control plane's published status (JSON).
* ``GET /metrics``: Prometheus text, the figures of every worker of the home.
* ``GET /events``: server-sent events ``swap``, ``weakness``, ``proposal`` (``?replay=1``
  sends those already known first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from .._fast_asgi import Middleware
from ..errors import UnknownRequestError
from .service import VortexService
from .worker import check_request_id

__all__ = ["EVENTS_POLL_SECS", "MAX_BODY_BYTES", "VortexMiddleware", "lifespan", "vortex_app"]

MAX_BODY_BYTES = 64 * 1024
"""Largest feedback body accepted."""

EVENTS_POLL_SECS = 0.25
"""How often ``/events`` looks for news."""


def _usable(raw: bytes) -> str | None:
    """The client's request id if it is usable as one (else the middleware mints one)."""
    try:
        return check_request_id(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


class VortexMiddleware(Middleware):
    """Pure ASGI middleware: request id in and out, every request timed and recorded.

    Its call is compiled (``vortex._fast_asgi.Middleware``): per request it finds the
    ``X-Request-ID`` header (or mints an id), sets :data:`~vortex.serving.worker.current_request`
    for ``infer``, hands the app a ``send`` that echoes the id, notes the status and the time
    of the last body message, and then records the request into the worker's segment (a 5xx
    as a failed request).

    Parameters
    ----------
    app
        The wrapped ASGI app.
    service
        The process's :class:`~vortex.serving.VortexService` (started by the lifespan).
    """

    def __init__(self, app: Any, service: VortexService) -> None:
        super().__init__(app, service, _usable)


def _problem(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def _read_body(receive: Callable) -> bytes | None:
    """The request body, or None once it grows past :data:`MAX_BODY_BYTES`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def vortex_app(service: VortexService, mounts: Mapping[str, Any] | None = None) -> Any:
    """The ASGI app of Vortex's routes, to mount at ``/vortex``; ``mounts`` adds more apps
    under it (e.g. ``{"/ui": dashboard_app}``).
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route, Router

    from .metrics import CONTENT_TYPE, fleet_exposition

    async def feedback(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _problem(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if kind != "application/json":
            return _problem(415, f"content-type {kind!r}: send application/json")
        body = await _read_body(request.receive)
        if body is None:
            return _problem(413, f"body too large: at most {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body)
        except ValueError as exc:
            return _problem(400, f"body is not JSON: {exc}")
        if not isinstance(data, dict):
            return _problem(400, f"body must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"request_id", "label", "episode"}
        if unknown:
            return _problem(422, f"unknown fields {sorted(unknown)}: expected request_id, label, episode")
        for name in ("request_id", "label"):
            if name not in data:
                return _problem(422, f"missing field {name!r}")
        try:
            error = service.running.feedback(data["request_id"], data["label"],
                                             episode=data.get("episode", 0))
        except UnknownRequestError as exc:
            return _problem(404, str(exc))
        except ValueError as exc:
            return _problem(422, str(exc))
        return JSONResponse({"request_id": data["request_id"], "error": error})

    async def status(request: Request) -> Response:
        status = await asyncio.to_thread(service.status)  # reads the published status file
        return Response(json.dumps(status, default=str), media_type="application/json")

    async def metrics(request: Request) -> Response:
        body = await asyncio.to_thread(fleet_exposition, service.running.layout.root)
        return Response(body, media_type=CONTENT_TYPE)

    async def events(request: Request) -> Response:
        replay = request.query_params.get("replay") in ("1", "true", "yes")
        return StreamingResponse(_event_stream(service, replay, request.is_disconnected),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    routes: list[Any] = [Route("/feedback", feedback, methods=["POST"]), Route("/status", status),
              Route("/metrics", metrics), Route("/events", events)]
    routes += [Mount(path, app) for path, app in (mounts or {}).items()]
    return Router(routes)


def _news(service: VortexService) -> list[tuple[str, str, Any]]:
    """Everything the events stream can report now, as ``(event, key, data)``."""
    items: list[tuple[str, str, Any]] = []
    for entry in service.running.serving_log():
        items.append(("swap", json.dumps(entry, sort_keys=True, default=str), entry))
    control = service.control_status() or {}
    for w in control.get("weaknesses", []):
        items.append(("weakness", json.dumps(w, sort_keys=True, default=str), w))
    for p in control.get("proposals", []):
        if isinstance(p, dict):
            items.append(("proposal", f"{p.get('id')}:{p.get('status')}", p))
    return items


async def _event_stream(service: VortexService, replay: bool,
                        disconnected: Callable[[], Any]) -> AsyncIterator[bytes]:
    seen: set[str] = set()
    first = True
    yield b": vortex events\n\n"
    while not await disconnected():
        news = await asyncio.to_thread(_news, service)
        for event, key, data in news:
            if key in seen:
                continue
            seen.add(key)
            if first and not replay:
                continue
            yield f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()
        first = False
        await asyncio.sleep(EVENTS_POLL_SECS)


def lifespan(service: VortexService) -> Callable[[Any], Any]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)`` that starts the
    service in each worker process and stops it at shutdown.
    """

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    return run
