# Checks of one request sample (latency, confidence, prediction error), included by the
# _fast_*.pyx modules that record one: every recorder refuses a bad value with the same
# ValueError naming it. The limits are vortex::valid_* of csrc/metric_window.hpp.

from libc.float cimport DBL_MAX
from libc.math cimport isnan


cdef int _reject(str name, double value, str rule) except -1:
    raise ValueError(f"{name}={value!r}: {rule}")


cdef inline int _check_request(double lat, double conf) except -1:
    if not (lat >= 0.0 and lat <= DBL_MAX):
        _reject("latency_ms", lat, "latency must be finite and >= 0")
    if not (conf >= 0.0 and conf <= 1.0):
        _reject("confidence", conf, "confidence must be in [0, 1]")
    return 0


cdef inline int _check_sample(double lat, double conf, double err) except -1:
    """A request sample whose prediction error may be known (NaN: not yet)."""
    _check_request(lat, conf)
    if not (isnan(err) or (err >= 0.0 and err <= DBL_MAX)):
        _reject("prediction_error", err,
                "prediction error must be NaN (unknown) or finite and >= 0")
    return 0
