# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Per-request fast path of :class:`vortex.training.SampleBuffer` (private).

``push`` is called once per served request, so its own call overhead decides its cost: a
pybind11 method with a NumPy caster costs about a microsecond here, this Cython method with the
buffer protocol a fraction of that. It drives the very C++ ``vortex::SampleRing`` owned by a
``vortex._core.SampleRing`` (pybind11), whose address it takes and whose Python object it keeps
alive.
"""

from cpython.buffer cimport PyBuffer_Release
from libc.stdint cimport int64_t, uintptr_t
from libc.math cimport NAN

include "_scalar_args.pxi"
include "_sample_args.pxi"

cdef extern from "sample_ring.hpp" namespace "vortex":
    cdef cppclass SampleRing:
        size_t feature_dim()
        int64_t push(const float* features, const void* label, double confidence, double error,
                     double timestamp, int64_t episode) except +
        int64_t extend(size_t n, const float* features, const void* labels,
                       const float* confidence, const float* error, const double* timestamp,
                       const int64_t* episode) except + nogil


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
        cdef SampleArgs a
        cdef Py_buffer view
        _sample_args(&a, label, confidence, error, episode, timestamp, self._float_labels)
        _feature_row(features, &view, self._dim)
        try:
            return ring.push(<const float*>view.buf, _label_ptr(&a, self._float_labels), a.confidence,
                             a.error, a.timestamp, a.episode)
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
