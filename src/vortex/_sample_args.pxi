# Array and sample arguments of the request path (included by the _fast_*.pyx modules that
# store samples: the in-process ring and the shared-memory segment), so that a sample is
# converted and refused the same way wherever it is pushed. Needs _scalar_args.pxi first.

from cpython.buffer cimport PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release, PyBUF_RECORDS_RO
from libc.stdint cimport int64_t

import numpy as np

cdef extern from "sample_ring.hpp" namespace "vortex":
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


cdef struct SampleArgs:
    double confidence
    double error
    double timestamp
    int64_t episode
    int64_t int_label
    float float_label


cdef inline int _sample_args(SampleArgs* a, object label, object confidence, object error,
                             object episode, object timestamp, bint float_labels) except -1:
    """The scalar arguments of a push, converted (ValueError naming a bad one); the range
    checks are the ring's."""
    a.confidence = _real(confidence, "confidence")
    a.error = _real(error, "error")
    a.episode = _int64(episode, "episode")
    a.timestamp = wall_clock_seconds() if timestamp is None else _real(timestamp, "timestamp")
    if float_labels:
        a.float_label = <float>_real(label, "label")
    else:
        a.int_label = _int64(label, "label")
    return 0


cdef inline const void* _label_ptr(SampleArgs* a, bint float_labels):
    return &a.float_label if float_labels else &a.int_label


cdef inline int _feature_row(object features, Py_buffer* view, Py_ssize_t dim) except -1:
    """Acquire `view` on `features` as a C-contiguous float32 row of length `dim` (converting
    when needed); the caller releases it."""
    if not _view_as(features, view, b'f', 4, 1, 0):
        features = _coerce(features, _F32, "features", 1, -1, 0, True)
        _view_as(features, view, b'f', 4, 1, 0)
    if view.shape[0] != dim:
        n = view.shape[0]
        PyBuffer_Release(view)
        raise ValueError(f"features has length {n}, expected feature_dim={dim}")
    return 0
