"""Lazily imported package attributes (PEP 562), shared by the packages that keep
``import vortex...`` light: a name is imported from its module on first access, then cached in
the package's namespace so later accesses are plain attribute reads.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(package: str, lazy: Mapping[str, str], namespace: dict[str, Any], name: str) -> Any:
    """The attribute ``name`` of ``package``: imported from the module ``lazy[name]`` names and
    stored in ``namespace`` (the package's ``globals()``); AttributeError for any other name.
    """
    module = lazy.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value
