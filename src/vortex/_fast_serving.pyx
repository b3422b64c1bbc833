# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""The request path of :meth:`vortex.Orchestrator.infer` (private).

:class:`RequestPath` is ``infer`` itself as one compiled call: its work is a dozen small steps
(mode lookup, feature check, slot read, guarded model call, softmax, two clock reads,
detector, tracker, pending table, the Prediction) that cost more to interpret than to do.
The helpers below it replace several NumPy calls of about a microsecond each
(``np.isfinite(x).all()``, ``np.exp``, ``max``, ``sum``, ``argmax``, a generator of floats) by
one C loop over the buffer. They only take the cases they can answer exactly; anything else
returns ``None`` and the caller runs its general NumPy path (which also produces the error
messages).
"""

from cpython.buffer cimport PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO
from cpython.object cimport PyObject_GenericSetAttr
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.math cimport exp, isfinite
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc


cdef inline char _code(const char* fmt):
    """The single type code of a native-layout buffer format, or 0."""
    if fmt == NULL:
        return b'B'
    if fmt[0] == b'<' or fmt[0] == b'=' or fmt[0] == b'@':
        fmt += 1
    if fmt[0] != 0 and fmt[1] == 0:
        return fmt[0]
    return 0


cdef bint _contiguous_view(object obj, Py_buffer* view) except -1:
    """Acquire a C-contiguous, non-empty buffer of float32 or float64; False (nothing held)
    otherwise."""
    if not PyObject_CheckBuffer(obj):
        return False
    PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO)
    cdef char code = _code(view.format)
    cdef Py_ssize_t expected = view.itemsize
    cdef int i
    cdef bint ok = ((code == b'f' and view.itemsize == 4) or (code == b'd' and view.itemsize == 8))
    if ok:  # C-contiguous: each stride is the product of the later extents (extent 1 is free)
        for i in range(view.ndim - 1, -1, -1):
            if view.shape[i] != 1 and view.strides[i] != expected:
                ok = False
                break
            expected *= view.shape[i]
        ok = ok and view.len > 0
    if not ok:
        PyBuffer_Release(view)
    return ok


def features_f32(x, Py_ssize_t dim):
    """``x`` itself if it is a 1-D C-contiguous float32 buffer of length ``dim`` with only
    finite values (used as the model input without a copy), else ``None``."""
    return _features_f32(x, dim)


cdef object _features_f32(object x, Py_ssize_t dim):
    cdef Py_buffer view
    if not _contiguous_view(x, &view):
        return None
    cdef const float* v = <const float*>view.buf
    cdef Py_ssize_t i
    cdef bint ok = view.ndim == 1 and view.itemsize == 4 and view.shape[0] == dim
    if ok:
        for i in range(dim):
            if not isfinite(v[i]):
                ok = False
                break
    PyBuffer_Release(&view)
    return x if ok else None


cdef inline double _at(const char* buf, Py_ssize_t i, bint f32) noexcept nogil:
    return (<const float*>buf)[i] if f32 else (<const double*>buf)[i]


cdef enum:
    _STACK_LOGITS = 256  # up to this many classes the exponentials live on the stack


cdef object _softmax_top(const char* buf, Py_ssize_t n, bint f32):
    """The result of :func:`softmax_top` over ``n`` values at ``buf``; None if any is not
    finite."""
    cdef Py_ssize_t i, best = 0
    cdef double top = _at(buf, 0, f32), z, total = 0.0, p, best_p = -1.0
    cdef double stack[_STACK_LOGITS]
    cdef double* e = stack
    cdef object probs, item
    for i in range(n):
        z = _at(buf, i, f32)
        if not isfinite(z):
            return None
        if z > top:
            top = z
    if n > _STACK_LOGITS:
        e = <double*>malloc(n * sizeof(double))
        if e == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            e[i] = exp(_at(buf, i, f32) - top)
            total += e[i]
        probs = PyTuple_New(n)
        for i in range(n):
            p = e[i] / total
            if p > best_p:  # first maximum, as numpy's argmax
                best, best_p = i, p
            item = p
            Py_INCREF(item)
            PyTuple_SET_ITEM(probs, i, item)
        return best, probs[best], probs
    finally:
        if e != stack:
            free(e)


def softmax_top(logits):
    """``(argmax, max probability, probabilities as a tuple of floats)`` of the softmax of a
    C-contiguous float32/float64 buffer of finite logits (flattened), computed in double as
    ``exp(z - max z) / sum``; ``None`` for any other input (non-finite, empty, other dtype)."""
    return _buffer_top(logits)


cdef object _buffer_top(object logits):
    cdef Py_buffer view
    if not _contiguous_view(logits, &view):
        return None
    try:
        return _softmax_top(<const char*>view.buf, view.len // view.itemsize, view.itemsize == 4)
    finally:
        PyBuffer_Release(&view)


def softmax_top_tensor(tensor, float32, strided):
    """:func:`softmax_top` of a ``torch.Tensor`` read in place: only a non-empty, contiguous,
    strided float32 CPU tensor (pass ``torch.float32`` and ``torch.strided``); else ``None``.

    Reads the values through ``data_ptr()``: cheaper than ``tensor.numpy()`` (which builds an
    array object) and valid because the caller holds ``tensor`` for the whole call.
    """
    return _tensor_top(tensor, float32, strided)


cdef object _tensor_top(object tensor, object float32, object strided):
    cdef uintptr_t address
    cdef Py_ssize_t nbytes
    if not (tensor.dtype is float32 and tensor.is_cpu and tensor.layout is strided
            and tensor.is_contiguous()):
        return None
    nbytes = tensor.nbytes
    if nbytes == 0:
        return None
    address = tensor.data_ptr()
    return _softmax_top(<const char*>address, nbytes // 4, True)


def build(cls, tuple names, tuple values):
    """A new ``cls`` instance with ``names[i]`` set to ``values[i]`` through the generic
    attribute setter, bypassing ``cls.__init__`` and ``__setattr__`` (how a frozen dataclass's
    own ``__init__`` sets its fields, without its per-field Python calls)."""
    return _build(cls, names, values)


cdef object _build(object cls, tuple names, tuple values):
    obj = cls.__new__(cls)
    cdef Py_ssize_t i
    for i in range(len(names)):
        PyObject_GenericSetAttr(obj, names[i], values[i])
    return obj


def pending_add(table, tuple item):
    """``table.add(item)`` of ``vortex.pending.PendingTable`` (see there)."""
    return _pending_add(table._items, table._ids, table.capacity, table._sweep_above, table._sweep,
                        item)


cdef object _pending_add(dict items, object ids, Py_ssize_t capacity, Py_ssize_t sweep_above,
                         object sweep, tuple item):
    request_id = next(ids)
    items[request_id] = item
    items.pop(request_id - capacity, None)
    if len(items) > sweep_above:
        sweep(request_id)
    return request_id


cdef class RequestPath:
    """:meth:`vortex.Orchestrator.infer` as one compiled call (see the module docstring).

    The orchestrator makes one, hands it what never changes (modes, the pending table, torch's
    entry points) and its own ``general`` helpers for everything uncommon, and calls
    :meth:`wire` whenever a component is attached, so a request reads the current slot,
    detector, tracker and RSI engine without looking them up.

    ``general`` provides ``_unknown_mode(mode) -> ValueError``, ``_features(x)`` (the
    validating path, which raises), ``_softmax_general(raw)`` (logits the helpers decline) and
    ``_regression_output(raw)``.
    """

    cdef dict modes
    cdef Py_ssize_t dim
    cdef bint classification
    cdef object general, prediction, guard, from_numpy, tensor_type, float32, strided, clock
    cdef tuple names
    cdef dict items
    cdef object ids, sweep
    cdef Py_ssize_t capacity, sweep_above
    cdef object slot, record_request, tracker, changes
    cdef dict recorders

    def __init__(self, general, pending, prediction, tuple names, dict modes, Py_ssize_t dim,
                 bint classification, guard, from_numpy, tensor_type, float32, strided, clock):
        self.general, self.prediction, self.names = general, prediction, names
        self.modes, self.dim, self.classification = modes, dim, classification
        self.guard, self.from_numpy, self.clock = guard, from_numpy, clock
        self.tensor_type, self.float32, self.strided = tensor_type, float32, strided
        self.items, self.ids, self.sweep = pending._items, pending._ids, pending._sweep
        self.capacity, self.sweep_above = pending.capacity, pending._sweep_above
        self.recorders = {}

    def wire(self, slot, detector, tracker, changes):
        """Serve from ``slot``; record into ``detector`` (or None), ``tracker`` and the change
        board ``changes`` (:class:`vortex.changes.ChangeBoard`, or None), which feeds the watch
        after an apply or a swap."""
        self.slot = slot
        self.record_request = None if detector is None else detector.record_request
        self.tracker, self.changes = tracker, changes
        self.recorders = {}

    def infer(self, x, mode):
        """What :meth:`vortex.Orchestrator.infer` returns for ``x`` in ``mode``."""
        cdef double start, end, latency_ms
        try:
            fn = self.modes.get(mode)
        except TypeError:  # unhashable
            fn = None
        if fn is None:
            raise self.general._unknown_mode(mode)
        features = _features_f32(x, self.dim)
        if features is None:
            features = self.general._features(x)
        start = self.clock()
        version, model = self.slot.get()
        with self.guard():
            raw = fn(model, self.from_numpy(features[None]))  # a (1, dim) view, no copy
        if self.classification:
            top = (_tensor_top(raw, self.float32, self.strided) if type(raw) is self.tensor_type
                   else _buffer_top(raw))
            if top is None:
                top = self.general._softmax_general(raw)
            output, confidence, probs = top
        else:
            output, confidence, probs = self.general._regression_output(raw), 1.0, None
        end = self.clock()
        latency_ms = (end - start) * 1e3
        detector_id = None if self.record_request is None else self.record_request(latency_ms, confidence)
        record = self.recorders.get(mode)
        if record is None:
            record = self.recorders[mode] = self.tracker.recorder(mode)
        record(latency_ms, confidence)
        changes = self.changes
        if changes is not None:
            changes.answered(version, latency_ms, confidence)
        request_id = _pending_add(self.items, self.ids, self.capacity, self.sweep_above, self.sweep,
                                  (detector_id, features, probs, output, confidence, mode, version, end))
        return _build(self.prediction, self.names,
                      (request_id, output, confidence, probs, mode, version, latency_ms))
