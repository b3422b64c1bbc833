# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""The per-request part of :class:`vortex.serving.asgi.VortexMiddleware` (private).

Everything the middleware does to a request (find or mint its id, the context ``infer`` reads,
the clock, the wrapped ``send`` that echoes the id and notes the status and the end, the
record) is a dozen small steps that cost more to interpret than to do: compiled here, one
object per request (:class:`_Exchange`: the request's context and its ``send`` at once). See
``scripts/request_path_cost.py`` for what each change saved.
"""

from cpython.contextvars cimport PyContextVar_Reset, PyContextVar_Set
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import os
from contextvars import ContextVar


cdef inline double _now() noexcept nogil:
    """``time.perf_counter()`` (CLOCK_MONOTONIC on Linux) without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# ---------------------------------------------------------------- request ids

cdef enum:
    _POOL = 4096  # random bytes fetched at once: 256 request ids per os.urandom call

cdef unsigned char _pool[_POOL]
cdef Py_ssize_t _taken = _POOL  # bytes of the pool used: all of them, until the first fill
cdef const char* _HEX = b"0123456789abcdef"


def _forget_pool():
    # A forked child must not mint its parent's next ids: it fills a pool of its own.
    global _taken
    _taken = _POOL


os.register_at_fork(after_in_child=_forget_pool)


cpdef str mint_request_id():
    """A new, unique request id: 32 random hex digits (16 bytes of ``os.urandom``, as
    ``uuid.uuid4().hex`` has 122 random bits), taken from a pool filled 4 KiB at a time.

    Thread-safe without a lock: between reading the pool's position and taking its 16 bytes no
    Python code runs (the GIL is held); a refill (which may release the GIL) writes the pool
    only after ``os.urandom`` returned. A forked child starts with an empty pool.
    """
    global _taken
    cdef bytes fresh
    cdef char out[32]
    cdef Py_ssize_t at, i
    if _taken + 16 > _POOL:
        fresh = os.urandom(_POOL)
        memcpy(_pool, <const char*>fresh, _POOL)
        _taken = 0
    at = _taken
    _taken = at + 16
    for i in range(16):
        out[2 * i] = _HEX[_pool[at + i] >> 4]
        out[2 * i + 1] = _HEX[_pool[at + i] & 15]
    return out[:32].decode("ascii")


# ---------------------------------------------------------------- the request's context

current_request = ContextVar("vortex_request", default=None)


cdef class RequestContext:
    """The HTTP request being served (set by :class:`vortex.serving.asgi.VortexMiddleware`;
    one is made per request, so it is a compiled class).

    Attributes
    ----------
    request_id
        Its ``X-Request-ID`` (minted when the client sent none).
    confidence
        Set by :meth:`~vortex.serving.worker.ServingWorker.infer`: the middleware then records
        the request, timed from its first byte to its last, instead of ``infer``.
    request, version
        Set by ``infer`` too: the request's number in this worker and the model version that
        answered, recorded with it (None: it never reached the model).
    status
        The response's HTTP status once it started (500 until then).
    """

    cdef public str request_id
    cdef public object confidence, request, version
    cdef public int status

    def __init__(self, str request_id):
        self.request_id = request_id
        self.confidence = self.request = self.version = None
        self.status = 500

    def answered(self, confidence, request, version):
        """What ``infer`` sets: one call instead of three attribute stores (which Python
        cannot specialise on a compiled class)."""
        self.confidence, self.request, self.version = confidence, request, version


cdef class _Exchange(RequestContext):
    """One request through the middleware: its context, and the ``send`` the app is given
    (it returns the server's own awaitable: no coroutine of its own per message)."""

    cdef object send, echo
    cdef double start, end

    def __call__(self, dict message):
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            # copied, not appended in place: an app may send one list with every response
            message["headers"] = [*message.get("headers", ()), self.echo]
        elif kind == "http.response.body" and not message.get("more_body", False):
            # the response is complete once this is written: what the app does after it
            # (background tasks, its own teardown) is not the client's wait
            self.end = _now()
        return self.send(message)


cdef _Exchange _exchange(str request_id, object send):
    cdef _Exchange ex = _Exchange.__new__(_Exchange)
    ex.request_id = request_id
    ex.status = 500
    ex.send = send
    ex.echo = (b"x-request-id", request_id.encode("ascii"))
    ex.start = _now()
    return ex


cdef class Middleware:
    """Base of :class:`vortex.serving.asgi.VortexMiddleware`: its ASGI call (see there).

    ``usable(raw)`` turns a client's ``X-Request-ID`` header value into the request id, or
    None (then one is minted).
    """

    cdef public object app, service
    cdef object usable

    def __init__(self, app, service, usable):
        self.app, self.service, self.usable = app, service, usable

    async def __call__(self, dict scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = self.usable(value)
                break
        cdef _Exchange ex = _exchange(mint_request_id() if request_id is None else request_id, send)
        token = PyContextVar_Set(current_request, ex)
        try:
            await self.app(scope, receive, ex)
        finally:
            PyContextVar_Reset(current_request, token)
            self._record(ex)

    cdef _record(self, _Exchange ex):
        cdef bint failed = ex.status >= 500
        if ex.confidence is None and not failed:
            return  # never reached the model and did not fail: not a request of the model
        worker = self.service.worker
        segment = worker.segment if worker is not None else None
        if segment is not None and segment.attached:
            # a 5xx is counted as a failed request, apart from prediction errors (which only
            # feedback knows): its confidence, if infer answered, else 0
            segment.record_answer(((ex.end if ex.end != 0.0 else _now()) - ex.start) * 1e3,
                                  0.0 if ex.confidence is None else ex.confidence,
                                  ex.request, ex.version, failed)
