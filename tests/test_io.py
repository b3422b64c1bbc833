import os
import signal
import subprocess
import sys
import textwrap

import pytest

from vortex._io import atomic_write, atomic_write_bytes, atomic_write_text


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
        with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) as proc:
            proc.stdout.readline()
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            assert proc.returncode == -signal.SIGKILL
        assert p.read_bytes() in (old, new)
