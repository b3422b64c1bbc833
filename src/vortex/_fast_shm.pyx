# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Per-request fast path of :class:`vortex.shm.WorkerSegment` (private).

``record_sample`` and ``push`` run once per served request, so their own call overhead decides
their cost, as for the in-process detector and sample buffer whose argument handling they share
(``_scalar_args.pxi``, ``_metric_args.pxi``, ``_sample_args.pxi``). They drive the C++
``vortex::shm::SegmentWriter`` owned by a ``vortex._core.ShmWriter`` (pybind11), whose address
they take and whose Python object they keep alive. Neither releases the GIL: a call is a few
dozen nanoseconds.
"""

from cpython.buffer cimport PyBuffer_Release
from libc.math cimport NAN
from libc.stdint cimport int64_t, uint64_t, uintptr_t

import operator

include "_scalar_args.pxi"
include "_metric_args.pxi"
include "_sample_args.pxi"

cdef extern from "shm_writer.hpp" namespace "vortex::shm":
    cdef cppclass Origin:
        uint64_t worker
        int64_t request
        int64_t version
        float misclassified
        float nll
    cdef cppclass SegmentWriter:
        bint record(double latency_ms, double confidence, double error, bint failed,
                    int64_t request, int64_t version) noexcept
        int64_t push(const float* features, const void* label, double confidence, double error,
                     double timestamp, int64_t episode, const Origin& origin) except +


cdef inline int64_t _optional_index(object x, str name) except? -2:
    """-1 for None (the format's "none"), else an integer >= 0 (ValueError naming it)."""
    if x is None:
        return -1
    return _int64(x, name, 0)


cdef inline float _optional_figure(object x, str name, double hi) except? -2.0:
    """NaN for None or NaN ("not measured"), else a real number in [0, hi]."""
    if x is None:
        return NAN
    cdef double v = _real(x, name)
    if v != v:
        return NAN
    if not 0.0 <= v <= hi:
        raise ValueError(f"{name}={x!r}: must be in [0, {hi:g}] (or NaN, None: not measured)")
    return <float>v


cdef class SegmentRecorder:
    """Base of :class:`vortex.shm.WorkerSegment`: ``record_sample`` and ``push`` (see there)."""

    cdef SegmentWriter* _w
    cdef object _owner
    cdef Py_ssize_t _dim
    cdef bint _float_labels

    def __cinit__(self, *args, **kwargs):
        self._w = NULL

    def _attach(self, owner, Py_ssize_t feature_dim, bint float_labels):
        """Drive the C++ writer of `owner` (a vortex._core.ShmWriter), keeping it alive."""
        from ._native import _core

        if type(owner) is not _core.ShmWriter:
            raise TypeError(f"expected a vortex._core.ShmWriter, got {type(owner).__name__}")
        cdef uintptr_t address = owner._address()
        self._owner = owner
        self._w = <SegmentWriter*>address
        self._dim = feature_dim
        self._float_labels = float_labels

    def _detach(self):
        """Refuse every later call (the segment was closed, or this is a forked child)."""
        self._w = NULL

    @property
    def attached(self):
        """False once the segment is closed, or in a process forked from its writer (every
        call then raises): the request path's check, without a call into the C++ object."""
        return self._w != NULL

    cdef inline SegmentWriter* _checked(self) except NULL:
        if self._w == NULL:
            raise ValueError("the segment is closed (or belongs to the process this one was "
                             "forked from); create a WorkerSegment in this process")
        return self._w

    def record_sample(self, latency_ms, confidence, prediction_error=NAN, *, bint failed=False):
        """Record one request's latency (ms), confidence and, if known, prediction error;
        ``failed=True`` counts it as a failed request (an HTTP 5xx: ``SegmentTotals.failed``,
        apart from prediction errors). Its request number and model version are "none" (see
        :meth:`record_answer`).

        As :meth:`vortex.RuntimeDetector.record_sample`: ``prediction_error`` NaN (the default)
        means no ground truth yet; a negative, NaN or infinite latency, a confidence outside
        [0, 1], a negative or infinite error, or a value that is not a real number raises
        ``ValueError`` naming the value, and nothing is recorded.
        """
        cdef double lat = _real(latency_ms, "latency_ms")
        cdef double conf = _real(confidence, "confidence")
        cdef double err = _real(prediction_error, "prediction_error")
        _check_sample(lat, conf, err)
        self._checked().record(lat, conf, err, failed, -1, -1)

    def record_answer(self, latency_ms, confidence, request, version, bint failed=False):
        """Record one answered request, as the serving worker does: its latency (ms) and
        confidence, its ``request`` number in this worker (an integer >= 0, which its
        feedback's sample names, see :meth:`push_feedback`) and the model ``version`` that
        answered (None: none, or an unversioned model; ``request`` None: it never reached the
        model, e.g. a 5xx before it); ``failed`` as in :meth:`record_sample`.

        Positional, so that the per-request call costs what :meth:`record_sample` does;
        ``ValueError`` naming a bad value, and nothing is recorded.
        """
        cdef double lat = _real(latency_ms, "latency_ms")
        cdef double conf = _real(confidence, "confidence")
        _check_request(lat, conf)
        cdef int64_t number = _optional_index(request, "request")
        cdef int64_t ver = _optional_index(version, "version")
        self._checked().record(lat, conf, NAN, failed, number, ver)

    def push(self, features, label, confidence=1.0, error=NAN, episode=0, timestamp=None):
        """Store one training sample and return its seq within this segment (0, 1, ...).

        Arguments and errors as :meth:`vortex.training.SampleBuffer.push`: ``ValueError``
        naming the bad value, and nothing is stored. It labels no known request (see
        :meth:`push_feedback`).
        """
        cdef Origin origin
        return self._push(features, label, confidence, error, episode, timestamp, &origin)

    def push_feedback(self, features, label, confidence, error, episode, worker, request, version,
                      misclassified, nll, timestamp=None):
        """Store the labelled sample of a served request (as :meth:`push`) and say which
        request it labels: ``worker`` (the answering worker's segment id, any worker's),
        ``request`` (its number there, as :meth:`record_answer` recorded it; None:
        not known), ``version`` (the model version that answered; None: none) and the change
        board's figures beside the error: ``misclassified`` (0 or 1) and ``nll`` (-log p(label);
        None: not measured, e.g. regression). ``ValueError`` naming a bad value, nothing stored.
        """
        cdef Origin origin
        try:
            origin.worker = worker if type(worker) is int else operator.index(worker)
        except (OverflowError, TypeError):
            raise ValueError(f"worker={worker!r}: must be a segment id, an integer in [0, 2**64)") from None
        origin.request = _optional_index(request, "request")
        origin.version = _optional_index(version, "version")
        origin.misclassified = _optional_figure(misclassified, "misclassified", 1.0)
        origin.nll = _optional_figure(nll, "nll", 3.4e38)
        return self._push(features, label, confidence, error, episode, timestamp, &origin)

    cdef object _push(self, features, label, confidence, error, episode, timestamp, Origin* origin):
        cdef SegmentWriter* w = self._checked()
        cdef SampleArgs a
        cdef Py_buffer view
        _sample_args(&a, label, confidence, error, episode, timestamp, self._float_labels)
        _feature_row(features, &view, self._dim)
        try:
            return w.push(<const float*>view.buf, _label_ptr(&a, self._float_labels), a.confidence,
                          a.error, a.timestamp, a.episode, origin[0])
        finally:
            PyBuffer_Release(&view)
