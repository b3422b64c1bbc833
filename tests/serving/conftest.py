"""Fixtures of the serving tests: ``home`` (as the shared-memory tests': its segment directory
is removed afterwards) and the example app imported on it."""

from __future__ import annotations

import os
import sys

import pytest
from shm.conftest import home  # noqa: F401  (the fixture, shared)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "examples", "http_service")


@pytest.fixture
def example_app(home, monkeypatch):  # noqa: F811 (the shared fixture, requested)
    """examples/http_service/app.py imported on ``home`` (a fresh module each time)."""
    monkeypatch.setenv("VORTEX_HOME", str(home))
    monkeypatch.setenv("VORTEX_INITIAL_EPOCHS", "1")
    monkeypatch.setenv("VORTEX_CONTROL", "never")  # the routes of a worker; the roles are tested elsewhere
    monkeypatch.syspath_prepend(EXAMPLE)
    sys.modules.pop("app", None)
    import app

    yield app
    sys.modules.pop("app", None)
