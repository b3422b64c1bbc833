"""Import of the compiled core with an error a user can act on."""

from __future__ import annotations

from .errors import CoreNotBuiltError

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise CoreNotBuiltError(
        "vortex's compiled core is not built; run `pip install .` in the source tree "
        "(an unbuilt source checkout on sys.path can shadow the installed package) "
        f"[{exc}]") from exc

__all__ = ["_core"]
