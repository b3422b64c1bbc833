import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from vortex._io import (MISSING, append_if_unchanged, atomic_write, atomic_write_bytes,
                        atomic_write_json, atomic_write_text, file_key, is_temp_name)


def test_replaces_content_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "state.json"
    atomic_write_text(p, "one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "state.bin"
    atomic_write_bytes(p, b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.bin"]


@pytest.mark.slow
def test_kill_9_while_writing_leaves_old_or_new(tmp_path):
    p = tmp_path / "big.bin"
    old, new = b"a" * 4_000_000, b"b" * 4_000_000
    atomic_write_bytes(p, old)
    code = textwrap.dedent(f"""
        import sys
        from vortex._io import atomic_write_bytes
        print("ready", flush=True)
        while True:
            atomic_write_bytes({str(p)!r}, {new[:1]!r} * 4_000_000)
            atomic_write_bytes({str(p)!r}, {old[:1]!r} * 4_000_000)
    """)
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        with subprocess.Popen([sys.executable, "-P", "-c", code], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) as proc:
            proc.stdout.readline()
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            assert proc.returncode == -signal.SIGKILL
        assert p.read_bytes() in (old, new)


def test_mode_is_given_to_the_new_file(tmp_path):
    p = tmp_path / "script.py"
    atomic_write_bytes(p, b"x = 1\n", mode=0o754)
    assert p.stat().st_mode & 0o7777 == 0o754
    atomic_write_bytes(p, b"x = 2\n")
    assert p.stat().st_mode & 0o7777 == 0o600


def test_temp_file_of_a_killed_write_is_recognised(tmp_path):
    p = tmp_path / "state.json"

    def killed(f):
        f.write(b"half")
        (left,) = os.listdir(tmp_path)
        assert is_temp_name(left)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, killed)
    assert os.listdir(tmp_path) == []
    assert not is_temp_name("state.json") and not is_temp_name(".state.json")
    assert not is_temp_name(".vtx-state.json") and not is_temp_name("x.tmp")


def test_json_layout(tmp_path):
    p = tmp_path / "j.json"
    atomic_write_json(p, {"b": [1], "a": "é"})
    assert json.loads(p.read_text("utf-8")) == {"a": "é", "b": [1]}
    assert p.read_text("utf-8") == '{\n "a": "\\u00e9",\n "b": [\n  1\n ]\n}'


def test_atomic_write_bytes_reports_the_errno_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "missing-dir" / "state.bin"
    with pytest.raises(FileNotFoundError) as info:
        atomic_write_bytes(target, b"x")
    assert str(target) in str(info.value)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "f").write_bytes(b"old")
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.geteuid() != 0:  # root ignores directory permissions
            with pytest.raises(PermissionError):
                atomic_write_bytes(tmp_path / "ro" / "f", b"new")
            assert (tmp_path / "ro" / "f").read_bytes() == b"old"
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    atomic_write_bytes(tmp_path / "ro" / "f", b"new", mode=0o644)
    assert (tmp_path / "ro" / "f").read_bytes() == b"new"
    assert (os.stat(tmp_path / "ro" / "f").st_mode & 0o777) == 0o644
    assert os.listdir(tmp_path / "ro") == ["f"]


def test_append_if_unchanged_appends_checks_and_drops_a_torn_tail(tmp_path):
    log, other = tmp_path / "log", tmp_path / "other"
    log.write_bytes(b"one\ntorn record that is longer")
    fd = os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        key = append_if_unchanged(fd, log, 4, b"two\n", [(log, file_key(log)), (other, MISSING)])
        assert log.read_bytes() == b"one\ntwo\n" and key == file_key(log)
        other.write_bytes(b"changed by someone else")
        assert append_if_unchanged(fd, log, 8, b"three\n", [(log, key), (other, MISSING)]) is None
        assert log.read_bytes() == b"one\ntwo\n"  # nothing written on a stale view
        with pytest.raises(FileNotFoundError, match="missing"):
            append_if_unchanged(fd, tmp_path / "missing", 0, b"x\n", [])
    finally:
        os.close(fd)
