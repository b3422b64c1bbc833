# Scalar arguments of the compiled request path (included by the _fast_*.pyx modules).
#
# A plain float (or float subclass, such as np.float64) or int is converted in C; anything else
# goes through vortex._scalars, which accepts the other real numbers and refuses bools,
# strings, None, complex numbers and ints out of range with a ValueError naming the argument.
# So a bad value costs nothing on the common path and is refused the same way in every module.

from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check, PyFloat_CheckExact
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from libc.stdint cimport int64_t

from vortex._scalars import as_index as _as_index, as_real as _as_real


cdef inline double _real(object x, str name) except? -1.0:
    """``x`` as a double (finiteness and range are the caller's rule)."""
    if PyFloat_CheckExact(x):
        return PyFloat_AS_DOUBLE(x)
    return _real_other(x, name)


cdef double _real_other(object x, str name) except? -1.0:
    # Out of line, so that the inlined fast path above stays two instructions.
    if PyFloat_Check(x):  # a subclass, such as np.float64
        return PyFloat_AS_DOUBLE(x)
    return _as_real(x, name)


cdef inline int64_t _int64(object x, str name, int64_t lo=-0x7fffffffffffffff - 1) except? -1:
    """``x`` as an int64 >= ``lo`` (a bool, a float such as 1.5 or an int out of range: ValueError)."""
    cdef int overflow = 0
    cdef long long v
    if PyLong_CheckExact(x):  # bool is a subclass of int, never an exact int
        v = PyLong_AsLongLongAndOverflow(x, &overflow)
        if overflow == 0 and v >= lo:
            return v
    return _int64_other(x, name, lo)


cdef int64_t _int64_other(object x, str name, int64_t lo) except? -1:
    return _as_index(x, name, lo)
