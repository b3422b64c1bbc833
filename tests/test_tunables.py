import os
import threading

import pytest

from vortex.tunables import Tunables, format_value, replace_value
from vortex._io import atomic_write_bytes


def test_format_and_replace():
    assert format_value(True) == "true" and format_value(3) == "3" and format_value(2.0) == "2.0"
    assert format_value("a\"b") == '"a\\"b"'
    text = "# c\nx = 1  # keep\ny=2\n"
    assert replace_value(text, "x", 5) == "# c\nx = 5  # keep\ny=2\n"
    assert replace_value(text, "y", 0.5) == "# c\nx = 1  # keep\ny=0.5\n"
    with pytest.raises(KeyError):
        replace_value(text, "z", 1)
    with pytest.raises(ValueError):
        format_value(float("nan"))


def test_hot_reload(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("a = 1\nb = true\n")
    t = Tunables(path, check_interval=0)
    assert t["a"] == 1 and t.get("b") is True and t.get("c", 7) == 7 and t.version == 1
    atomic_write_bytes(path, b"a = 2\nb = false\n")
    assert t["a"] == 2 and t.get("b") is False and t.version == 2


def test_interval_caches_and_reload_forces(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("a = 1\n")
    t = Tunables(path, check_interval=3600)
    atomic_write_bytes(path, b"a = 2\n")
    assert t["a"] == 1          # within the interval: no stat at all
    assert t.reload() and t["a"] == 2


def test_same_content_rewritten_does_not_bump_version(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("a = 1\n")
    t = Tunables(path, check_interval=0)
    atomic_write_bytes(path, b"a = 1\n")
    assert t["a"] == 1 and t.version == 1


def test_bad_file_keeps_previous_values(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("a = 1\n")
    t = Tunables(path, check_interval=0)
    atomic_write_bytes(path, b"a = = 2\n")
    assert t["a"] == 1 and "TOMLDecodeError" in t.last_error
    os.unlink(path)
    assert t["a"] == 1 and "FileNotFoundError" in t.last_error
    with pytest.raises(ValueError, match="cannot load"):
        Tunables(path)
    with pytest.raises(ValueError, match="check_interval"):
        Tunables(tmp_path / "x", check_interval=-1)


def test_readers_see_whole_versions_while_a_writer_replaces(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("a = 0\nb = 0\n")
    t = Tunables(path, check_interval=0)
    stop = threading.Event()
    bad = []

    def read():
        while not stop.is_set():
            v = t.values()
            if v["a"] != v["b"]:
                bad.append(v)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    for i in range(1, 200):
        atomic_write_bytes(path, f"a = {i}\nb = {i}\n".encode())
    stop.set()
    for r in readers:
        r.join()
    assert not bad
    assert t["a"] == 199
