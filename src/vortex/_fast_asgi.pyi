# Type stub of the Cython module vortex/_fast_asgi.pyx (private).
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

def mint_request_id() -> str: ...

current_request: ContextVar[RequestContext | None]

class RequestContext:
    request_id: str
    confidence: float | None
    request: int | None
    version: int | None
    status: int
    def __init__(self, request_id: str) -> None: ...
    def answered(self, confidence: float, request: int, version: int | None) -> None: ...

class Middleware:
    app: Any
    service: Any
    def __init__(self, app: Any, service: Any, usable: Callable[[bytes], str | None]) -> None: ...
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None: ...
