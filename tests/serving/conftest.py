"""Homes for the serving tests; their shared-memory directories are removed afterwards."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from vortex.shm.location import segment_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "examples", "http_service")


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    yield h
    shutil.rmtree(segment_dir(h), ignore_errors=True)


@pytest.fixture
def example_app(home, monkeypatch):
    """examples/http_service/app.py imported on ``home`` (a fresh module each time)."""
    monkeypatch.setenv("VORTEX_HOME", str(home))
    monkeypatch.setenv("VORTEX_INITIAL_EPOCHS", "1")
    monkeypatch.syspath_prepend(EXAMPLE)
    sys.modules.pop("app", None)
    import app

    yield app
    sys.modules.pop("app", None)
