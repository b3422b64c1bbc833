"""tree_sha256: every change that matters changes it; caches do not."""

from __future__ import annotations

import os

from vortex.rsi.trees import tree_sha256


def _tree(root):
    os.makedirs(root / "pkg" / "__pycache__")
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"cache")
    (root / "conf.toml").write_text("workers = 4\n")


def test_content_mode_name_and_links_count_caches_do_not(tmp_path):
    _tree(tmp_path)
    base = tree_sha256(tmp_path)
    assert tree_sha256(tmp_path) == base
    (tmp_path / "pkg" / "__pycache__" / "other.pyc").write_bytes(b"more cache")
    os.makedirs(tmp_path / ".pytest_cache")
    (tmp_path / ".pytest_cache" / "x").write_text("y")
    assert tree_sha256(tmp_path) == base
    (tmp_path / "conf.toml").write_text("workers = 5\n")
    edited = tree_sha256(tmp_path)
    assert edited != base
    os.chmod(tmp_path / "conf.toml", 0o600)
    assert tree_sha256(tmp_path) != edited
    os.chmod(tmp_path / "conf.toml", 0o644)
    assert tree_sha256(tmp_path) == edited
    os.rename(tmp_path / "conf.toml", tmp_path / "conf2.toml")
    assert tree_sha256(tmp_path) != edited
    os.rename(tmp_path / "conf2.toml", tmp_path / "conf.toml")
    os.symlink("/etc/passwd", tmp_path / "link")
    with_link = tree_sha256(tmp_path)
    assert with_link != edited
    os.unlink(tmp_path / "link")
    os.symlink("/etc/hostname", tmp_path / "link")
    assert tree_sha256(tmp_path) != with_link


def test_contents_cannot_fake_a_file_boundary(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_bytes(b"1\0y\0F644 1\0" + b"2")
    (b / "x").write_bytes(b"1")
    (b / "y").write_bytes(b"2")
    assert tree_sha256(a) != tree_sha256(b)
