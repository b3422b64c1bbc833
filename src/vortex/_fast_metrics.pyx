# cython: language_level=3, boundscheck=False, wraparound=False, binding=False, embedsignature=True
"""Per-request fast path of the metric window (private; see vortex.monitor).

A pybind11 method call costs ~200 ns here; this Cython method records a sample into the very
same C++ ``vortex::MetricWindow`` (created by ``vortex._core.MetricWindow``) for a fraction of
that. The recorder keeps a reference to the owning pybind11 object, so the raw pointer it
holds stays valid for its whole life.
"""

from libc.math cimport NAN
from libc.errno cimport errno
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from posix.unistd cimport pread

include "_scalar_args.pxi"
include "_metric_args.pxi"

cdef extern from "metric_window.hpp" namespace "vortex" nogil:
    cdef cppclass WindowStats:
        uint64_t total_recorded, size, capacity, recent_count, baseline_count
        double recent_latency_mean, recent_latency_max
        uint64_t recent_over_threshold
        double recent_over_latency_mean, recent_confidence_mean
        uint64_t recent_error_count
        double recent_error_mean, baseline_latency_mean, baseline_confidence_mean
        uint64_t baseline_error_count
        double baseline_error_mean
        int64_t oldest_ns, newest_ns
        double all_latency_sum, all_confidence_sum

    cdef cppclass MetricWindow:
        uint64_t record(double latency_ms, double confidence, double error) noexcept
        bint set_error(uint64_t id, double error) noexcept
        WindowStats analyze(double latency_threshold_ms) noexcept
        size_t size() noexcept


# Above this many samples an analysis is long enough to be worth releasing the GIL.
cdef enum:
    _RELEASE_GIL_ABOVE = 16384


cdef class Stats:
    """One analysis pass's statistics (the fields of C++ ``vortex::WindowStats``), with
    attribute access cheap enough for the detector's per-tick checks."""

    cdef readonly uint64_t total_recorded, size, capacity, recent_count, baseline_count
    cdef readonly double recent_latency_mean, recent_latency_max
    cdef readonly uint64_t recent_over_threshold
    cdef readonly double recent_over_latency_mean, recent_confidence_mean
    cdef readonly uint64_t recent_error_count
    cdef readonly double recent_error_mean, baseline_latency_mean, baseline_confidence_mean
    cdef readonly uint64_t baseline_error_count
    cdef readonly double baseline_error_mean
    cdef readonly int64_t oldest_ns, newest_ns
    cdef readonly double all_latency_sum, all_confidence_sum


cdef Stats _wrap(const WindowStats& s):
    cdef Stats out = Stats.__new__(Stats)
    out.total_recorded = s.total_recorded
    out.size = s.size
    out.capacity = s.capacity
    out.recent_count = s.recent_count
    out.baseline_count = s.baseline_count
    out.recent_latency_mean = s.recent_latency_mean
    out.recent_latency_max = s.recent_latency_max
    out.recent_over_threshold = s.recent_over_threshold
    out.recent_over_latency_mean = s.recent_over_latency_mean
    out.recent_confidence_mean = s.recent_confidence_mean
    out.recent_error_count = s.recent_error_count
    out.recent_error_mean = s.recent_error_mean
    out.baseline_latency_mean = s.baseline_latency_mean
    out.baseline_confidence_mean = s.baseline_confidence_mean
    out.baseline_error_count = s.baseline_error_count
    out.baseline_error_mean = s.baseline_error_mean
    out.oldest_ns = s.oldest_ns
    out.newest_ns = s.newest_ns
    out.all_latency_sum = s.all_latency_sum
    out.all_confidence_sum = s.all_confidence_sum
    return out


cdef class MetricRecorder:
    """Records samples into a ``vortex._core.MetricWindow`` it is attached to.

    Subclasses (``vortex.monitor.RuntimeDetector``) call :meth:`_attach` in ``__init__``.
    """

    cdef MetricWindow* _ptr
    cdef readonly object _window

    def __cinit__(self, *args, **kwargs):
        self._ptr = NULL
        self._window = None

    def _attach(self, window):
        """Use ``window`` (a ``vortex._core.MetricWindow``) from now on; keeps a reference."""
        cdef uintptr_t address = window._address()
        self._window = window
        self._ptr = <MetricWindow*>address

    def record_sample(self, latency_ms, confidence, prediction_error=NAN):
        """Record one request's latency (ms), confidence and, if known, prediction error.

        ``prediction_error`` NaN (the default) means no ground truth yet. A negative, NaN or
        infinite latency, a confidence outside [0, 1], a negative or infinite error, or a value
        that is not a real number (a bool, a string, None) raises ``ValueError`` naming the
        value, and nothing is recorded.
        """
        cdef double lat = _real(latency_ms, "latency_ms")
        cdef double conf = _real(confidence, "confidence")
        cdef double err = _real(prediction_error, "prediction_error")
        _check_sample(lat, conf, err)
        if self._ptr == NULL:
            raise RuntimeError("recorder is not attached to a metric window")
        self._ptr.record(lat, conf, err)

    def record_request(self, latency_ms, confidence):
        """Record a request whose ground truth comes later; returns the sample's id.

        Pass the id to :meth:`record_error` when the label arrives. Validation as in
        :meth:`record_sample`.
        """
        cdef double lat = _real(latency_ms, "latency_ms")
        cdef double conf = _real(confidence, "confidence")
        _check_request(lat, conf)
        if self._ptr == NULL:
            raise RuntimeError("recorder is not attached to a metric window")
        return self._ptr.record(lat, conf, NAN)

    def record_requests(self, latencies_ms, confidences):
        """Record a batch of requests whose ground truth comes later; returns the first id.

        ``latencies_ms`` and ``confidences`` are 1-D floating NumPy arrays of equal length n;
        the requests get the ids ``first, first + 1, ..., first + n - 1`` in array order (one
        batch's ids are contiguous, whatever other threads record meanwhile), the same state
        as n calls of :meth:`record_request` but one timestamp for all. Every value is checked
        before any is stored (``ValueError`` naming the first bad one; nothing recorded); the
        copy runs without the GIL, so a batch holds it for a couple of microseconds whatever n.
        """
        if self._window is None:
            raise RuntimeError("recorder is not attached to a metric window")
        return self._window.record_batch(latencies_ms, confidences, None)

    def record_error(self, sample_id, prediction_error):
        """Attach the prediction error of an earlier :meth:`record_request` sample.

        Returns False when that sample has already left the window (the error then no longer
        counts in the analysis). A NaN, negative or infinite error, or a ``sample_id`` that is
        not an integer >= 0, raises ``ValueError`` naming it.
        """
        cdef uint64_t sid = <uint64_t>_int64(sample_id, "sample_id", 0)
        cdef double err = _real(prediction_error, "prediction_error")
        _check_known_error(err)
        if self._ptr == NULL:
            raise RuntimeError("recorder is not attached to a metric window")
        return self._ptr.set_error(sid, err)

    def _stats(self, double latency_threshold_ms):
        """One analysis pass (C++ ``MetricWindow::analyze``) as a :class:`Stats`.

        Its only binding: a Cython call plus C-level attribute reads is several times cheaper
        than a pybind11 one, which matters for the detector's per-tick checks on small windows.
        """
        cdef WindowStats s
        if self._ptr == NULL:
            raise RuntimeError("recorder is not attached to a metric window")
        if latency_threshold_ms != latency_threshold_ms:
            raise ValueError("latency threshold must not be NaN")
        if self._ptr.size() > _RELEASE_GIL_ABOVE:
            # Safe without the GIL: pure C++ over the window's own buffer, under its lock;
            # self (and so the window's owner) stays referenced by this frame.
            with nogil:
                s = self._ptr.analyze(latency_threshold_ms)
        else:
            s = self._ptr.analyze(latency_threshold_ms)
        return _wrap(s)


def statm_resident_pages(int fd):
    """Resident pages of the process whose ``/proc/<pid>/statm`` is open as ``fd``.

    Re-reads the file from offset 0 with ``pread`` and parses its second field in C
    (about half the cost of doing the same in Python).
    """
    cdef char buf[128]
    cdef Py_ssize_t n = pread(fd, buf, 127, 0)
    cdef Py_ssize_t i = 0
    cdef long long pages = 0
    if n <= 0:
        raise OSError(errno, "cannot read statm")
    while i < n and buf[i] != b' ':  # skip the first field (total program size)
        i += 1
    i += 1
    if i >= n or not (b'0' <= buf[i] <= b'9'):
        raise ValueError(f"unexpected statm content {buf[:n]!r}")
    while i < n and b'0' <= buf[i] <= b'9':
        pages = pages * 10 + (buf[i] - 48)
        i += 1
    return pages
