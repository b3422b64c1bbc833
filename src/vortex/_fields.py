"""One way to check a configuration value and to say what is wrong with it.

Every configuration dataclass (``vortex.config``, the ``[tool.vortex]`` settings of
``vortex.rsi.settings``, the training worker's arguments) checks its fields in
``__post_init__`` with these helpers, so a wrong value raises
:class:`~vortex.errors.ConfigError` whose message starts with the field's name as the user wrote
it and the value: ``RuntimeDetectorConfig.window_size=5: must be >= 10``, or, for a setting
read from a ``pyproject.toml``, ``[tool.vortex] sandbox.memory_mb=1.5: must be an integer``.

A dataclass names its fields with the prefix :func:`field_prefix` finds: its ``field_prefix``
attribute (a class attribute or a property), else ``"<ClassName>."``.
"""

from __future__ import annotations

import math
import sys
from typing import Any, NoReturn

from .errors import ConfigError

__all__ = ["fail", "number", "boolean", "strings", "field_prefix", "fail_field", "check_number",
           "check_bool", "check_strings"]

_INT64_MAX = 2 ** 63 - 1
_FLOAT_MAX = sys.float_info.max


def fail(label: str, value: Any, why: str) -> NoReturn:
    """Raise :class:`ConfigError` ``"<label>=<value!r>: <why>"``."""
    raise ConfigError(f"{label}={value!r}: {why}")


def number(label: str, value: Any, *, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> Any:
    """``value`` if it is a finite number (an int if ``integer``) inside the bounds.

    Integers must also fit in 64 bits: they reach C code, torch and worker command lines.
    """
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        fail(label, value, f"must be {'an integer' if integer else 'a number'}")
    if integer:
        hi = _INT64_MAX if hi is None else min(hi, _INT64_MAX)
    elif not (isinstance(value, float) or -_FLOAT_MAX <= value <= _FLOAT_MAX) or not math.isfinite(value):
        fail(label, value, "must be finite")
    if lo is not None and (value <= lo if lo_open else value < lo):
        fail(label, value, f"must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        fail(label, value, f"must be {'<' if hi_open else '<='} {hi}")
    return value


def boolean(label: str, value: Any) -> bool:
    """``value`` if it is True or False."""
    if not isinstance(value, bool):
        fail(label, value, "must be True or False")
    return value


def strings(label: str, value: Any, *, required: bool = False) -> tuple[str, ...]:
    """``value`` (a list or tuple of non-empty strings; non-empty if ``required``) as a tuple."""
    if not isinstance(value, (list, tuple)) or (required and not value) or not all(
            isinstance(v, str) and v for v in value):
        fail(label, list(value) if isinstance(value, tuple) else value,
             "must be a non-empty list of strings" if required else "must be a list of non-empty strings")
    return tuple(value)


def field_prefix(obj: object) -> str:
    """How the fields of ``obj`` are named in messages (see the module docstring)."""
    prefix = getattr(obj, "field_prefix", None)
    return prefix if isinstance(prefix, str) else f"{type(obj).__name__}."


def fail_field(obj: object, name: str, value: Any, why: str) -> NoReturn:
    """Raise :class:`ConfigError` for the field ``name`` of ``obj``."""
    fail(field_prefix(obj) + name, value, why)


def check_number(obj: object, name: str, **bounds: Any) -> None:
    """Check the field ``name`` of ``obj`` with :func:`number`."""
    number(field_prefix(obj) + name, getattr(obj, name), **bounds)


def check_bool(obj: object, *names: str) -> None:
    """Check that each named field of ``obj`` is True or False."""
    for name in names:
        boolean(field_prefix(obj) + name, getattr(obj, name))


def check_strings(obj: object, name: str, *, required: bool = False) -> None:
    """Check the field ``name`` of ``obj`` with :func:`strings` (it must be a tuple)."""
    value = getattr(obj, name)
    strings(field_prefix(obj) + name, value, required=required)
    if not isinstance(value, tuple):
        fail_field(obj, name, value, "must be a tuple of strings")
