"""One number from the caller, checked: the request path's scalar arguments (private).

The compiled request path (``_fast_metrics``, ``_fast_ring``) takes a plain ``float`` or
``int`` itself and calls these only for anything else; the orchestrator calls them for
labels. Each returns the value as a Python ``float``/``int`` or raises ``ValueError`` naming
the argument and the value, so a bad value is refused the same way wherever it enters.

Accepted: Python and NumPy reals (``int``, ``float``, ``np.float32``, ``np.int64``...), other
:class:`numbers.Real` types, and 0-d arrays or tensors holding one. Refused: ``bool`` (a flag is
not a measurement; ``True`` silently becoming 1 hid bugs), strings, ``None``, complex numbers,
arrays with more than one element, and ints too large for the target type.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

__all__ = ["INT64_MAX", "INT64_MIN", "as_class_label", "as_index", "as_real"]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def _refuse(name: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"{name}={value!r}: {rule}")


def _unwrap(value: Any) -> Any:
    """The Python scalar inside a 0-d NumPy array or torch tensor; ``value`` otherwise."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def as_real(value: Any, name: str, rule: str = "must be a real number") -> float:
    """``value`` as a float (not checked for finiteness: the caller's rule decides)."""
    if type(value) is float:
        return value
    scalar = _unwrap(value)
    if isinstance(scalar, bool) or not isinstance(scalar, numbers.Real):
        raise _refuse(name, value, rule)
    try:
        return float(scalar)
    except (OverflowError, TypeError, ValueError):
        raise _refuse(name, value, rule) from None


def as_index(value: Any, name: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """``value`` as an int in ``[lo, hi]``; floats, even integral ones (``2.0``), are refused,
    as ``operator.index`` refuses them.
    """
    if type(value) is int:
        index = value
    else:
        scalar = _unwrap(value)
        if isinstance(scalar, bool):
            raise _refuse(name, value, f"must be {_int_range(lo, hi)}, not a bool")
        try:
            index = operator.index(scalar)
        except TypeError:
            raise _refuse(name, value, f"must be {_int_range(lo, hi)}") from None
    if not lo <= index <= hi:
        raise _refuse(name, value, f"must be {_int_range(lo, hi)}")
    return index


def _int_range(lo: int, hi: int) -> str:
    if (lo, hi) == (INT64_MIN, INT64_MAX):
        return "an int64 integer"
    return f"an integer >= {lo}" if hi == INT64_MAX else f"an integer in [{lo}, {hi}]"


def as_class_label(value: Any, n_classes: int, name: str = "label") -> int:
    """A classification label as a class index in ``[0, n_classes)``.

    Integers of any kind are taken as they are; a float is taken only when it is integral
    (``2.0``, as labels read from a float column are), never rounded (``1.7`` is refused).
    """
    if type(value) is int:
        label = value
    else:
        scalar = _unwrap(value)
        if isinstance(scalar, numbers.Integral) and not isinstance(scalar, bool):
            label = operator.index(scalar)
        else:
            real = as_real(value, name, f"must be a class index in 0..{n_classes - 1}")
            if not (math.isfinite(real) and real.is_integer()):
                raise _refuse(name, value, f"must be a class index in 0..{n_classes - 1}, "
                                           "not a fraction")
            label = int(real)
    if not 0 <= label < n_classes:
        raise _refuse(name, value, f"not a class of this model (0..{n_classes - 1})")
    return label
