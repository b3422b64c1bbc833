"""A live web dashboard of a Vortex home: :func:`dashboard_app` (an ASGI app, mountable under
``/vortex/ui`` in a service) and ``vortex dashboard --home H``.

It reads everything from the home on disk (see :mod:`vortex.dashboard.state`), refreshes every
second, and acts (approve, reject, roll back a proposal; swap or roll back the model) through
the same API as the command line, with a token. Needs the ``dashboard`` extra (starlette,
uvicorn). docs/DASHBOARD.md describes it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TOKEN_HEADER", "dashboard_app"]


def __getattr__(name: str) -> Any:  # PEP 562: importing vortex.dashboard loads no web framework
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'vortex.dashboard' has no attribute {name!r}")
