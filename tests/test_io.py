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


def test_sealed_file_round_trip_and_every_damage_is_reported(tmp_path):
    from vortex._io import SEAL_SIZE, atomic_write_sealed, read_sealed
    from vortex.errors import CorruptFileError

    p = tmp_path / "data.bin"
    atomic_write_sealed(p, memoryview(b"payload" * 100))
    body, sealed = read_sealed(p, CorruptFileError)
    assert bytes(body) == b"payload" * 100 and sealed and p.stat().st_size == 700 + SEAL_SIZE
    good = p.read_bytes()
    for damaged in (good[:-1], good[:10], b"", good[:300] + bytes([good[300] ^ 1]) + good[301:],
                    good[:-3] + b"00\n"):
        p.write_bytes(damaged)
        with pytest.raises(CorruptFileError, match="data.bin") as info:
            read_sealed(p, CorruptFileError, remedy="restore it")
        assert info.value.path == str(p) and info.value.remedy == "restore it"
    # a file without a seal is accepted only if the caller recognises it as an older valid file
    p.write_bytes(b"old format")
    assert read_sealed(p, CorruptFileError, unsealed=lambda d: d.startswith(b"old"))[1] is False
    with pytest.raises(FileNotFoundError):
        read_sealed(tmp_path / "missing", CorruptFileError)


def test_temp_file_carries_the_writers_pid_and_its_lock(tmp_path):
    """While a write is in progress its temp file is locked: another process cannot take it."""
    p = tmp_path / "state.bin"
    seen = {}

    def write(f):
        (name,) = os.listdir(tmp_path)
        seen["name"] = name
        probe = subprocess.run(
            [sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n"
             "except BlockingIOError:\n    print('locked')", str(tmp_path / name)],
            capture_output=True, text=True, timeout=30)
        seen["probe"] = probe.stdout.strip()
        f.write(b"x")

    atomic_write(p, write)
    assert is_temp_name(seen["name"]) and f".{os.getpid()}-" in seen["name"]
    assert seen["probe"] == "locked" and os.listdir(tmp_path) == ["state.bin"]


def test_remove_orphan_temps_respects_target_and_live_writers(tmp_path):
    from vortex._io import remove_orphan_temps

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    names = [f".vtx-a.arrow.{gone}-abc123.tmp", f".vtx-b.arrow.{gone}-abc123.tmp",
             f".vtx-a.arrow.{os.getpid()}-abc123.tmp", "a.arrow", ".vtx-a.arrow"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert remove_orphan_temps(tmp_path, target="a.arrow") == [names[0]]
    assert remove_orphan_temps(tmp_path) == [names[1]]
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
    assert remove_orphan_temps(tmp_path / "missing") == []
