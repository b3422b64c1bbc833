# Checks of one request sample (latency, confidence, prediction error), included by the
# _fast_*.pyx modules that record one: every recorder refuses a bad value with the same
# ValueError naming it. The limits are vortex::valid_* of csrc/metric_window.hpp, which the
# batch record (csrc/bind_metrics.cpp) applies too: each rule is written once, in C++.

from libc.math cimport isnan

cdef extern from "metric_window.hpp" namespace "vortex" nogil:
    bint valid_latency(double v) noexcept
    bint valid_confidence(double v) noexcept
    bint valid_error(double v) noexcept


cdef int _reject(str name, double value, str rule) except -1:
    raise ValueError(f"{name}={value!r}: {rule}")


cdef inline int _check_request(double lat, double conf) except -1:
    if not valid_latency(lat):
        _reject("latency_ms", lat, "latency must be finite and >= 0")
    if not valid_confidence(conf):
        _reject("confidence", conf, "confidence must be in [0, 1]")
    return 0


cdef inline int _check_sample(double lat, double conf, double err) except -1:
    """A request sample whose prediction error may be known (NaN: not yet)."""
    _check_request(lat, conf)
    if not valid_error(err):
        _reject("prediction_error", err,
                "prediction error must be NaN (unknown) or finite and >= 0")
    return 0


cdef inline int _check_known_error(double err) except -1:
    """A prediction error that arrived: NaN is no longer a possible value."""
    if isnan(err) or not valid_error(err):
        _reject("prediction_error", err, "prediction error must be finite and >= 0")
    return 0
