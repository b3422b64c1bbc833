# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Per-request fast path of :class:`vortex.training.SampleBuffer` (private).

``push`` is called once per served request, so its own call overhead decides its cost: a
pybind11 method with a NumPy caster costs about a microsecond here, this Cython method with the
buffer protocol a fraction of that. It drives the very C++ ``vortex::SampleRing`` owned by a
``vortex._core.SampleRing`` (pybind11), whose address it takes and whose Python object it keeps
alive.
"""

from cpython.buffer cimport PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO
from libc.stdint cimport int64_t, uintptr_t
from libc.math cimport NAN

import numpy as np

include "_scalar_args.pxi"

cdef extern from "sample_ring.hpp" namespace "vortex":
    cdef cppclass SampleRing:
        size_t feature_dim()
        int64_t push(const float* features, const void* label, double confidence, double error,
                     double timestamp, int64_t episode) except +
        int64_t extend(size_t n, const float* features, const void* labels,
                       const float* confidence, const float* error, const double* timestamp,
                       const int64_t* episode) except + nogil
    double wall_clock_seconds()

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_I64 = np.dtype(np.int64)
_INT64_MAX = np.iinfo(np.int64).max


cdef inline bint _format_is(const char* fmt, char code):
    """True if a buffer format string is `code` in native little-endian layout."""
    if fmt == NULL:
        return False
    if fmt[0] == b'<' or fmt[0] == b'=' or fmt[0] == b'@':
        fmt += 1
    if code == b'q':  # int64 is 'l' where C long is 64-bit
        return (fmt[0] == b'q' or fmt[0] == b'l') and fmt[1] == 0
    return fmt[0] == code and fmt[1] == 0


cdef bint _view_as(object obj, Py_buffer* view, char code, Py_ssize_t itemsize, int ndim,
                   Py_ssize_t width) except -1:
    """Acquire `obj`'s buffer if it already is a C-contiguous array of the wanted type and shape
    (width = row length for ndim 2). Returns False (nothing held) otherwise."""
    if not PyObject_CheckBuffer(obj):
        return False
    PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO)
    cdef bint ok = (view.ndim == ndim and view.itemsize == itemsize
                    and _format_is(view.format, code))
    if ok:
        if ndim == 1:
            ok = view.shape[0] <= 1 or view.strides[0] == itemsize
        else:
            ok = (view.shape[1] == width and (view.shape[0] <= 1 or view.strides[0] == itemsize * width)
                  and (width <= 1 or view.strides[1] == itemsize))
    if not ok:
        PyBuffer_Release(view)
    return ok


def _to_numpy(x, str name):
    """A NumPy array of `x` (array-like or torch tensor), without copying when possible."""
    if type(x) is np.ndarray:
        return x
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be read as an array ({exc})") from None


def _coerce(x, dtype, str name, int ndim, Py_ssize_t n, Py_ssize_t width, bint bools=False):
    """`x` as a C-contiguous array of `dtype` with the wanted shape (n < 0: any length), or
    ValueError naming `name`. Only same-kind casts are allowed (float64 -> float32, int -> float),
    never complex, object, strings or float -> int; bools only where `bools` (features, not
    the scalar columns); unsigned integers into int64 only when every value fits."""
    arr = _to_numpy(x, name)
    kinds = "biuf" if bools else "iuf"
    if not np.can_cast(arr.dtype, dtype, casting="same_kind") or arr.dtype.kind not in kinds:
        raise ValueError(f"{name}: dtype {arr.dtype} cannot be cast safely to {dtype}")
    if arr.dtype.kind == "u" and dtype == _I64 and arr.size and arr.max() > _INT64_MAX:
        i = int(np.argmax(arr > _INT64_MAX))  # vectorised: one pass to find, one to locate
        raise ValueError(f"{name}[{i}]={int(arr.flat[i])} is outside int64")
    if arr.ndim != ndim:
        want = "(n,)" if ndim == 1 else f"(n, {width})"
        raise ValueError(f"{name}: shape {arr.shape} should be {want}")
    if ndim == 2 and arr.shape[1] != width:
        raise ValueError(f"{name}: rows have {arr.shape[1]} features, expected feature_dim={width}")
    if n >= 0 and arr.shape[0] != n:
        raise ValueError(f"{name}: length {arr.shape[0]} does not match the {n} rows of features")
    return np.ascontiguousarray(arr, dtype=dtype)


cdef int _column(object x, Py_buffer* view, char code, Py_ssize_t itemsize, object dtype, str name,
                 Py_ssize_t n) except -1:
    """Acquire `view` on `x` as a C-contiguous 1-D column of n values of `dtype`, converting
    (same-kind casts only) when it is not one already. The view holds its own reference."""
    if _view_as(x, view, code, itemsize, 1, 0):
        if view.shape[0] == n:
            return 0
        PyBuffer_Release(view)
    _view_as(_coerce(x, dtype, name, 1, n, 0), view, code, itemsize, 1, 0)
    return 0


cdef class SampleRingWriter:
    """Base of :class:`vortex.training.SampleBuffer`: ``push`` and ``extend`` (see there)."""

    cdef SampleRing* _ring
    cdef object _owner
    cdef Py_ssize_t _dim
    cdef bint _float_labels
    cdef object _label_dtype

    def __cinit__(self, *args, **kwargs):
        self._ring = NULL

    def _attach(self, owner):
        """Drive the C++ ring of `owner` (a vortex._core.SampleRing), keeping it alive."""
        from ._native import _core

        if type(owner) is not _core.SampleRing:
            raise TypeError(f"expected a vortex._core.SampleRing, got {type(owner).__name__}")
        cdef uintptr_t address = owner._address()
        self._owner = owner
        self._ring = <SampleRing*>address
        self._dim = <Py_ssize_t>self._ring.feature_dim()
        self._float_labels = owner.label_kind == 1
        self._label_dtype = _F32 if self._float_labels else _I64

    cdef inline SampleRing* _checked(self) except NULL:
        if self._ring == NULL:
            raise RuntimeError("SampleBuffer is not initialised")
        return self._ring

    def push(self, features, label, confidence=1.0, error=NAN, episode=0, timestamp=None):
        """Store one sample and return its seq.

        Parameters
        ----------
        features
            1-D float array-like of length ``feature_dim`` (NumPy array, list or torch tensor);
            must be finite.
        label
            An int64 integer (``label_dtype="int64"``) or a finite number (``"float32"``).
        confidence
            The model's confidence in [0, 1].
        error
            Prediction error in [0, 1], NaN when there is no ground truth yet.
        episode
            Episode id, an int64 integer (the backward flux chain runs within an episode).
        timestamp
            Seconds since the epoch; None means now.

        Every scalar is a real number of any kind (Python, NumPy, a 0-d array); a bool, a
        string or None is refused, and so is a fraction where an integer is due.

        Raises
        ------
        ValueError
            Naming the bad value; nothing is stored.
        """
        cdef SampleRing* ring = self._checked()
        cdef Py_buffer view
        cdef int64_t ilabel
        cdef float flabel
        cdef const void* plabel
        cdef double c = _real(confidence, "confidence")
        cdef double e = _real(error, "error")
        cdef int64_t ep = _int64(episode, "episode")
        cdef double ts = wall_clock_seconds() if timestamp is None else _real(timestamp, "timestamp")
        if self._float_labels:
            flabel = <float>_real(label, "label")
            plabel = &flabel
        else:
            ilabel = _int64(label, "label")
            plabel = &ilabel
        if not _view_as(features, &view, b'f', 4, 1, 0):
            features = _coerce(features, _F32, "features", 1, -1, 0, True)
            _view_as(features, &view, b'f', 4, 1, 0)
        try:
            if view.shape[0] != self._dim:
                raise ValueError(f"features has length {view.shape[0]}, expected feature_dim={self._dim}")
            return ring.push(<const float*>view.buf, plabel, c, e, ts, ep)
        finally:
            PyBuffer_Release(&view)

    def extend(self, features, labels, confidences=None, errors=None, episodes=None,
               timestamps=None):
        """Store a batch of samples and return the seq of the first.

        Parameters
        ----------
        features
            ``(n, feature_dim)`` float array (NumPy or torch), finite.
        labels
            ``(n,)`` integers (``label_dtype="int64"``) or finite floats (``"float32"``).
        confidences, errors, episodes, timestamps
            ``(n,)`` columns; None means 1.0, NaN (no ground truth), 0 and now.

        Raises
        ------
        ValueError
            Naming the bad column (and row); the whole batch is validated before anything is
            stored, so nothing is.
        """
        cdef SampleRing* ring = self._checked()
        cdef Py_buffer vf, vl, vc, ve, vt, vs
        cdef const float* pc = NULL
        cdef const float* pe = NULL
        cdef const double* pt = NULL
        cdef const int64_t* ps = NULL
        cdef Py_ssize_t n
        cdef int64_t first
        cdef int held = 0
        try:
            if not _view_as(features, &vf, b'f', 4, 2, self._dim):
                features = _coerce(features, _F32, "features", 2, -1, self._dim, True)
                _view_as(features, &vf, b'f', 4, 2, self._dim)
            held = 1
            n = vf.shape[0]
            if self._float_labels:
                _column(labels, &vl, b'f', 4, _F32, "labels", n)
            else:
                _column(labels, &vl, b'q', 8, _I64, "labels", n)
            held |= 2
            if confidences is not None:
                _column(confidences, &vc, b'f', 4, _F32, "confidences", n)
                held |= 4
                pc = <const float*>vc.buf
            if errors is not None:
                _column(errors, &ve, b'f', 4, _F32, "errors", n)
                held |= 8
                pe = <const float*>ve.buf
            if timestamps is not None:
                _column(timestamps, &vt, b'd', 8, _F64, "timestamps", n)
                held |= 16
                pt = <const double*>vt.buf
            if episodes is not None:
                _column(episodes, &vs, b'q', 8, _I64, "episodes", n)
                held |= 32
                ps = <const int64_t*>vs.buf
            # The GIL is released only around the C++ validation and copy: every buffer is
            # held by a Py_buffer until the finally below, and the ring has its own mutex.
            with nogil:
                first = ring.extend(<size_t>n, <const float*>vf.buf, vl.buf, pc, pe, pt, ps)
            return first
        finally:
            if held & 1:
                PyBuffer_Release(&vf)
            if held & 2:
                PyBuffer_Release(&vl)
            if held & 4:
                PyBuffer_Release(&vc)
            if held & 8:
                PyBuffer_Release(&ve)
            if held & 16:
                PyBuffer_Release(&vt)
            if held & 32:
                PyBuffer_Release(&vs)
