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

from cpython.buffer cimport (PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO,
                             PyBUF_WRITABLE)
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from cpython.object cimport PyObject_GenericSetAttr
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.ref cimport Py_INCREF
from libc.math cimport exp, isfinite
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy


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


# ---------------------------------------------------------------- the pending ring's writer

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* The seqlock's stores (vortex.serving.pending): release, so that a reader that sees a
       slot's even seq also sees the payload written before it, on arm64 as on x86-64. */
    static inline void vtx_store_release(char* p, uint64_t v) {
        __atomic_store_n((uint64_t*)p, v, __ATOMIC_RELEASE);
    }
    static inline void vtx_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
    static inline void vtx_store_u64(char* p, uint64_t v) { memcpy(p, &v, 8); }
    static inline void vtx_store_f64(char* p, double v) { memcpy(p, &v, 8); }
    static inline uint64_t vtx_mix(uint64_t z) {  /* splitmix64's finaliser */
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    /* 63-bit key of a request id's UTF-8 bytes, never 0: eight bytes at a time, each word
       mixed into the state through a multiply and splitmix64's finaliser, the length last. */
    static inline uint64_t vtx_request_key(const char* s, Py_ssize_t n) {
        uint64_t h = 0x9e3779b97f4a7c15ull, w;
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, s + i, 8);
            h = vtx_mix(h ^ w) * 0x9e3779b97f4a7c15ull;
        }
        w = 0;
        memcpy(&w, s + i, (size_t)(n - i));
        h = vtx_mix(vtx_mix(h ^ w) ^ (uint64_t)n);
        return (h >> 1) ? (h >> 1) : 1;
    }
    """
    void vtx_store_release(char* p, unsigned long long v) nogil
    void vtx_fence_release() nogil
    void vtx_store_u64(char* p, unsigned long long v) nogil
    void vtx_store_f64(char* p, double v) nogil
    unsigned long long vtx_request_key(const char* s, Py_ssize_t n) nogil



def request_key_of(bytes utf8):
    """The 63-bit key (never 0) of a request id's UTF-8 bytes: what
    :func:`vortex.serving.pending.request_key` returns and :class:`PendingSlots` stores."""
    return vtx_request_key(utf8, len(utf8))


cdef unsigned long long _key_of_str(str request_id) except? 0:
    cdef Py_ssize_t n
    cdef const char* s
    try:
        s = PyUnicode_AsUTF8AndSize(request_id, &n)  # cached in the str: no copy for ASCII
    except UnicodeEncodeError:  # lone surrogates, as request_key encodes them
        utf8 = request_id.encode("utf-8", "surrogatepass")
        return vtx_request_key(utf8, len(utf8))
    return vtx_request_key(s, n)


cdef class PendingSlots:
    """The request path's writer of a pending ring (:class:`vortex.serving.pending.PendingRing`
    holds it): one call per request writes the key array's word and the slot, under the
    slot's seqlock, with plain stores and one ``memcpy`` of the features.

    The whole of :meth:`add` runs without releasing the GIL (it calls no Python code once it
    has its record number), so the threads of one process never interleave two writes: the
    ring keeps its single writer without a lock.
    """

    cdef Py_buffer view
    cdef bint held
    cdef char* keys
    cdef char* slots
    cdef Py_ssize_t capacity, slot_size, n_outputs, feature_bytes, features_at
    cdef unsigned long long written
    cdef double* outputs  # the request's outputs, converted before its slot is touched
    cdef object as_row

    def __cinit__(self, mapping, Py_ssize_t keys_at, Py_ssize_t slots_at, Py_ssize_t capacity,
                  Py_ssize_t slot_size, Py_ssize_t n_outputs, Py_ssize_t feature_dim, as_row):
        PyObject_GetBuffer(mapping, &self.view, PyBUF_WRITABLE)
        self.held = True
        if capacity <= 0 or keys_at + 8 * capacity > slots_at \
                or slots_at + capacity * slot_size > self.view.len \
                or 56 + 8 * n_outputs + 4 * feature_dim > slot_size:
            raise ValueError(f"a ring of {capacity} slots of {slot_size} bytes at {slots_at} does "
                             f"not fit a mapping of {self.view.len} bytes")
        self.keys = <char*>self.view.buf + keys_at
        self.slots = <char*>self.view.buf + slots_at
        self.capacity, self.slot_size, self.n_outputs = capacity, slot_size, n_outputs
        self.feature_bytes, self.features_at = 4 * feature_dim, 56 + 8 * n_outputs
        self.as_row = as_row  # features -> a 1-D C-contiguous float32 array (general case)
        self.written = 0
        self.outputs = <double*>malloc(n_outputs * sizeof(double))
        if self.outputs == NULL:
            raise MemoryError()

    @property
    def written(self):
        """Entries written so far (entry ``n`` is in slot ``n % capacity``)."""
        return self.written

    def add(self, str request_id, features, version, double confidence, double output,
            probabilities, double created, request=None):
        """Store one answered request (see ``PendingRing.add``); returns its key."""
        cdef Py_buffer row
        cdef unsigned long long key = _key_of_str(request_id)
        cdef long long v = -1 if version is None else version
        cdef long long number = -1 if request is None else request
        cdef Py_ssize_t i
        cdef tuple probs
        if not self.held:
            raise ValueError("the pending ring is closed")
        cdef bint ok = _contiguous_view(features, &row)
        cdef Py_ssize_t values
        if ok and (row.itemsize != 4 or row.len != self.feature_bytes):
            PyBuffer_Release(&row)
            ok = False
        if not ok:  # a list, a tensor, float64, strided: converted (nothing held meanwhile)
            features = self.as_row(features)
            PyObject_GetBuffer(features, &row, PyBUF_RECORDS_RO)
            if row.len != self.feature_bytes:
                values = row.len // 4
                PyBuffer_Release(&row)
                raise ValueError(f"features has {values} values; the ring takes "
                                 f"{self.feature_bytes // 4}")
        try:
            if probabilities is not None:
                probs = <tuple?>probabilities
                if len(probs) != self.n_outputs:
                    raise ValueError(f"probabilities has {len(probs)} values; the ring takes "
                                     f"{self.n_outputs}")
                for i in range(self.n_outputs):
                    self.outputs[i] = probs[i]
            # from here on no Python code runs: the GIL keeps this process's writes whole
            n = self.written
            self.written = n + 1
            self._write(n, key, created, v, confidence, output, number, probabilities is not None,
                        <const char*>row.buf)
        finally:
            PyBuffer_Release(&row)
        return key

    cdef void _write(self, unsigned long long n, unsigned long long key, double created,
                     long long version, double confidence, double output, long long request,
                     bint outputs, const char* features) noexcept:
        cdef Py_ssize_t at = <Py_ssize_t>(n % <unsigned long long>self.capacity)
        cdef char* slot = self.slots + at * self.slot_size
        vtx_store_release(slot, 2 * n + 1)  # being written
        vtx_fence_release()  # the odd seq is visible before any byte of the payload
        vtx_store_u64(self.keys + 8 * at, key)
        vtx_store_u64(slot + 8, key)
        vtx_store_f64(slot + 16, created)
        vtx_store_u64(slot + 24, <unsigned long long>version)
        vtx_store_f64(slot + 32, confidence)
        vtx_store_f64(slot + 40, output)
        vtx_store_u64(slot + 48, <unsigned long long>request)
        if outputs:
            memcpy(slot + 56, self.outputs, 8 * self.n_outputs)
        memcpy(slot + self.features_at, features, self.feature_bytes)
        vtx_store_release(slot, 2 * n + 2)  # complete

    def release(self):
        """Let go of the mapping (before it is closed). Idempotent."""
        if self.held:
            self.held = False
            PyBuffer_Release(&self.view)

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
        free(self.outputs)
