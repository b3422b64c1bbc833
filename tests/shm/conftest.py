"""Fixtures of the shared-memory tests: a home whose segment directory is removed afterwards."""

from __future__ import annotations

import shutil

import pytest

from vortex.shm.location import segment_dir


@pytest.fixture
def home(tmp_path):
    """An empty home; its segments (in /dev/shm) are removed when the test ends."""
    h = tmp_path / "home"
    h.mkdir()
    yield h
    shutil.rmtree(segment_dir(h), ignore_errors=True)
