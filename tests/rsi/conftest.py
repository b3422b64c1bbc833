"""Fixtures: a small target tree and a copy of the sample service."""

from __future__ import annotations

import shutil

import pytest

from rsi_support import SAMPLE, TINY_PYPROJECT


@pytest.fixture
def tiny_tree(tmp_path):
    root = tmp_path / "target"
    (root / "tests").mkdir(parents=True)
    (root / "pyproject.toml").write_text(TINY_PYPROJECT)
    (root / "conf.toml").write_text("# service settings\nworkers = 4  # threads\nstrict = true\n")
    (root / "mod.py").write_text("# the module under test\nVALUE = 1\n")
    (root / "tests" / "test_mod.py").write_text(
        "import mod\n\n\ndef test_value():\n    assert mod.VALUE >= 1\n\n\ndef test_more():\n    assert True\n")
    return str(root)


@pytest.fixture
def sample_tree(tmp_path):
    dst = tmp_path / "sample"
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return str(dst)
