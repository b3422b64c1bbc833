"""Runtime tunables with hot reload.

A tunables file is TOML with top-level ``name = value`` lines::

    ensemble_size = 16   # members averaged in thorough mode
    temperature = 1.0

The serving process reads values through a :class:`Tunables` object. ``get`` is cheap: it
re-checks the file (``os.stat``: mtime, size, inode) at most every ``check_interval`` seconds
and re-parses only when the stat changed *and* the content hash differs, so an applied or
rolled-back RSI proposal changes the service's behaviour without a restart. A file that fails
to parse leaves the previous values in force (``last_error`` says why).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import threading
import time
import tomllib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ._scalars import as_real

__all__ = ["Tunables", "format_value", "replace_value"]

log = logging.getLogger(__name__)


def format_value(value: Any) -> str:
    """The TOML literal of a tunable value (bool, int, float or string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"tunable value {value!r} must be finite")
        text = repr(round(value, 6))
        return text if any(c in text for c in ".e") else text + ".0"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ValueError(f"unsupported tunable value {value!r}")


def replace_value(text: str, name: str, value: Any) -> str:
    """``text`` with the ``name = ...`` line's value replaced (comment kept).

    Raises
    ------
    KeyError
        No top-level ``name = ...`` line in ``text``.
    """
    pattern = re.compile(rf"^(\s*{re.escape(name)}\s*=\s*)([^#\n]*?)(\s*(?:#[^\n]*)?)$", re.M)
    m = pattern.search(text)
    if m is None:
        raise KeyError(name)
    return text[:m.start(2)] + format_value(value) + text[m.end(2):]


class Tunables:
    """Hot-reloading view of a tunables file.

    Parameters
    ----------
    path
        The TOML file.
    check_interval
        Seconds between two stat checks on the read path (0 = check on every read).
    """

    def __init__(self, path: str | os.PathLike[str], *, check_interval: float = 0.25) -> None:
        rule = "must be a finite number >= 0"
        interval = as_real(check_interval, "check_interval", rule)
        if not (math.isfinite(interval) and interval >= 0):
            raise ValueError(f"check_interval={check_interval!r}: {rule}")
        self.path = os.fspath(path)
        self.check_interval = interval
        self._lock = threading.Lock()
        self._values: Mapping[str, Any] = MappingProxyType({})
        self._stat: tuple[int, int, int] | None = None
        self._sha = ""
        self._next_check = 0.0
        self.version = 0
        self.last_error: str | None = None
        if not self.reload():
            raise ValueError(f"{self.path}: cannot load tunables: {self.last_error}")

    def reload(self) -> bool:
        """Re-read the file if it changed; returns False when it could not be read or parsed."""
        with self._lock:
            self._next_check = time.monotonic() + self.check_interval
            try:
                st = os.stat(self.path)
                key = (st.st_mtime_ns, st.st_size, st.st_ino)
                if key == self._stat:
                    return True
                with open(self.path, "rb") as fh:
                    data = fh.read()
                sha = hashlib.sha256(data).hexdigest()
                if sha != self._sha:
                    values = tomllib.loads(data.decode("utf-8"))
                    self._values = MappingProxyType(values)
                    self._sha = sha
                    self.version += 1
                    log.info("tunables %s reloaded (version %d): %s", self.path, self.version, values)
                self._stat = key
                self.last_error = None
                return True
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("tunables %s not reloaded, keeping previous values: %s", self.path, exc)
                return False

    def _maybe_reload(self) -> None:
        if time.monotonic() >= self._next_check:
            self.reload()

    def get(self, name: str, default: Any = None) -> Any:
        """The current value of ``name`` (``default`` if the file does not set it)."""
        self._maybe_reload()
        return self._values.get(name, default)

    def __getitem__(self, name: str) -> Any:
        self._maybe_reload()
        return self._values[name]

    def values(self) -> dict[str, Any]:
        """A snapshot of every value."""
        self._maybe_reload()
        return dict(self._values)

    @property
    def sha256(self) -> str:
        """sha256 (hex) of the file's bytes the current values were loaded from (a failed
        reload keeps the previous ones, and their hash); unlike :meth:`get`, reading it does not
        look for a newer file.
        """
        return self._sha
