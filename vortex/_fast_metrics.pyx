# cython: language_level=3, boundscheck=False, wraparound=False, binding=False, embedsignature=True
"""Per-request fast path of the metric window (private; see vortex.monitor).

A pybind11 method call costs ~200 ns here; this Cython method records a sample into the very
same C++ ``vortex::MetricWindow`` (created by ``vortex._core.MetricWindow``) for a fraction of
that. The recorder keeps a reference to the owning pybind11 object, so the raw pointer it
holds stays valid for its whole life.
"""

from libc.float cimport DBL_MAX
from libc.math cimport NAN, isnan
from libc.errno cimport errno
from libc.stdint cimport uintptr_t
from posix.unistd cimport pread

cdef extern from "metric_window.hpp" namespace "vortex" nogil:
    cdef cppclass MetricWindow:
        void record(double latency_ms, double confidence, double error) noexcept


cdef int _reject(str name, double value, str rule) except -1:
    raise ValueError(f"{name}={value!r}: {rule}")


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

    def record_sample(self, double latency_ms, double confidence,
                      double prediction_error=NAN):
        """Record one request's latency (ms), confidence and, if known, prediction error.

        ``prediction_error`` NaN (the default) means no ground truth yet. A negative, NaN or
        infinite latency, a confidence outside [0, 1] or a negative or infinite error raises
        ``ValueError`` naming the value, and nothing is recorded.
        """
        if not (latency_ms >= 0.0 and latency_ms <= DBL_MAX):
            _reject("latency_ms", latency_ms, "latency must be finite and >= 0")
        if not (confidence >= 0.0 and confidence <= 1.0):
            _reject("confidence", confidence, "confidence must be in [0, 1]")
        if not (isnan(prediction_error) or (prediction_error >= 0.0 and prediction_error <= DBL_MAX)):
            _reject("prediction_error", prediction_error,
                    "prediction error must be NaN (unknown) or finite and >= 0")
        if self._ptr == NULL:
            raise RuntimeError("recorder is not attached to a metric window")
        self._ptr.record(latency_ms, confidence, prediction_error)


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
