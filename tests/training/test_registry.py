"""ModelRegistry: versions, checksums, serving log, pins, cleanup (kill -9 and corruption: tests/faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from vortex.errors import (ChecksumMismatchError, CorruptFileError, RegistryCorruptError,
                           RegistryError, VersionNotFoundError)
from vortex.training.registry import COLUMNS, LOG_COLUMNS, ModelRegistry, verify_registry


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}


def test_register_load_roundtrip_and_metadata(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.list_versions() == [] and reg.active_version is None
    v1 = reg.register(_state(1), {"trigger": "initial", "samples": 0})
    v2 = reg.register(torch.nn.Linear(4, 3), {"parent": v1, "trigger": "manual", "samples": 120,
                                              "epochs": 3, "train_loss": 0.5, "val_loss": 0.6,
                                              "val_accuracy": 0.8, "improvement_pct": 4.0})
    assert (v1, v2) == (1, 2)
    loaded = reg.load(v1)
    assert torch.equal(loaded["w"], _state(1)["w"]) and torch.equal(loaded["b"], _state(1)["b"])
    rows = reg.list_versions()
    assert [r["version"] for r in rows] == [1, 2]
    assert set(rows[1]) == set(COLUMNS) | {"pinned"} and rows[1]["pinned"] is False
    assert rows[1]["parent"] == 1 and rows[1]["samples"] == 120 and rows[1]["val_accuracy"] == 0.8
    assert rows[0]["status"] == "candidate" and len(rows[0]["sha256"]) == 64
    # a second instance (another process) sees the same state
    assert ModelRegistry(tmp_path).list_versions() == rows


def test_numpy_state_loads_as_torch(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.register({"a": np.arange(6, dtype=np.float32).reshape(2, 3)})
    assert torch.equal(reg.load(v)["a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_checksum_mismatch_refused(tmp_path):
    reg = ModelRegistry(tmp_path)
    v = reg.register(_state(1))
    reg.set_active(v, "initial")
    path = reg.weights_path(v)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[-1] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        reg.load(v)
    with pytest.raises(ChecksumMismatchError):
        reg.set_active(v, "again")
    os.unlink(path)
    with pytest.raises(ChecksumMismatchError, match="missing"):
        reg.load(v)


def test_unknown_version_and_bad_input(tmp_path):
    reg = ModelRegistry(tmp_path)
    with pytest.raises(VersionNotFoundError, match="7"):
        reg.load(7)
    with pytest.raises(VersionNotFoundError):
        reg.load()  # no active version yet
    with pytest.raises(ValueError, match="unknown metadata"):
        reg.register(_state(1), {"colour": "red"})
    with pytest.raises(ValueError, match="set_active"):
        reg.register(_state(1), {"status": "active"})
    with pytest.raises(ValueError, match="non-empty mapping"):
        reg.register({})
    assert reg.list_versions() == []


def test_serving_log_and_version_at(tmp_path):
    reg = ModelRegistry(tmp_path)
    v1, v2, v3 = (reg.register(_state(i)) for i in range(3))
    reg.set_active(v1, "initial", at=100.0)
    reg.set_active(v2, "auto-swap", at=200.0)
    reg.set_active(v1, "rollback: watch regression", at=300.0)
    reg.set_active(v3, "manual", at=400.0)
    log = reg.serving_log()
    assert [(e["from_version"], e["to_version"], e["reason"]) for e in log] == [
        (None, 1, "initial"), (1, 2, "auto-swap"), (2, 1, "rollback: watch regression"), (1, 3, "manual")]
    assert [reg.version_at(t) for t in (50, 100, 150, 250, 300, 399.9, 1e12)] == [None, 1, 1, 2, 1, 1, 3]
    statuses = {r["version"]: r["status"] for r in reg.list_versions()}
    assert statuses == {1: "retired", 2: "retired", 3: "active"}
    assert reg.active_version == 3


def test_cleanup_keeps_newest_and_active(tmp_path):
    reg = ModelRegistry(tmp_path)
    versions = [reg.register(_state(i), {"created_at": 1000.0 + i}) for i in range(6)]
    reg.set_active(versions[0], "initial")
    with open(os.path.join(tmp_path, "v000099.safetensors"), "wb") as f:
        f.write(b"orphan of a crash")
    removed = reg.cleanup(keep_last_n=2, now=2000.0)
    assert removed == [2, 3, 4]
    assert reg.versions() == [1, 5, 6]
    assert not os.path.exists(reg.weights_path(3)) and not os.path.exists(reg.weights_path(99))
    # age limit removes even the newest, never the active one
    assert reg.cleanup(keep_last_n=5, max_age_days=1.0, now=1000.0 + 2 * 86400) == [5, 6]
    assert reg.versions() == [1]
    with pytest.raises(RegistryError, match="active"):
        reg.remove(1)
    # numbers are never reused, not even the number of a weights file left by a crash
    assert reg.register(_state(9)) == 100


def test_corrupt_metadata_file_is_a_registry_error(tmp_path):
    ModelRegistry(tmp_path).register(_state(1))
    with open(os.path.join(tmp_path, "versions.arrow"), "wb") as f:
        f.write(b"not arrow")
    with pytest.raises(RegistryCorruptError, match="versions.arrow: no valid sha256 seal") as info:
        ModelRegistry(tmp_path)
    assert isinstance(info.value, RegistryError) and isinstance(info.value, CorruptFileError)
    assert "restore it from a backup" in str(info.value)


def _chain_ok(log) -> bool:
    """Every entry's from_version is the previous entry's to_version (no entry lost)."""
    return all(b["from_version"] == a["to_version"] for a, b in zip(log, log[1:]))


def _entries(data: bytes) -> list[dict]:
    """The entries of serving-log bytes as a plain JSON reader sees them, checksums dropped."""
    return [{k: v for k, v in json.loads(line).items() if k in LOG_COLUMNS} for line in data.splitlines()]


def test_serving_log_is_json_lines_and_ignores_a_torn_last_line(tmp_path):
    reg = ModelRegistry(tmp_path)
    v1, v2 = reg.register(_state(1)), reg.register(_state(2))
    reg.set_active(v1, "initial", at=100.0)
    path = tmp_path / "serving_log.jsonl"
    complete = path.read_bytes()
    assert json.loads(complete) == {"time": 100.0, "from_version": None, "to_version": 1,
                                    "reason": "initial", "crc32": json.loads(complete)["crc32"]}
    # a writer killed mid-line leaves a line without its newline: readers ignore it ...
    with open(path, "ab") as f:
        f.write(b'{"time":200.0,"from_version":1,"to_ver')
    for fresh in (reg, ModelRegistry(tmp_path)):
        assert fresh.active_version == 1 and len(fresh.serving_log()) == 1
    # ... and the next entry replaces it
    ModelRegistry(tmp_path).set_active(v2, "manual", at=300.0)
    data = path.read_bytes()
    assert data.startswith(complete) and _entries(data) == [
        {"time": 100.0, "from_version": None, "to_version": 1, "reason": "initial"},
        {"time": 300.0, "from_version": 1, "to_version": 2, "reason": "manual"}]
    assert [(e["from_version"], e["to_version"]) for e in reg.serving_log()] == [(None, 1), (1, 2)]


def test_corrupt_serving_log_line_is_a_registry_error(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.set_active(reg.register(_state(1)), "initial")
    with open(tmp_path / "serving_log.jsonl", "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(RegistryCorruptError, match="serving_log.jsonl: line 2 has no valid checksum"):
        ModelRegistry(tmp_path)


def test_a_changed_digit_or_a_missing_line_in_the_serving_log_is_reported(tmp_path):
    """Each line's CRC-32 and the chain of versions catch what JSON alone would believe."""
    reg = ModelRegistry(tmp_path)
    for i in range(1, 13):
        reg.register(_state(i))
    for v in (1, 2, 3):
        reg.set_active(v, "swap", at=float(v))
    path = tmp_path / "serving_log.jsonl"
    good = path.read_bytes()
    lines = good.splitlines(keepends=True)
    cases = {
        "digit of to_version in the last line": good.replace(b'"to_version":3', b'"to_version":12'),
        "digit of the time in the first line": good.replace(b'"time":1.0', b'"time":7.0', 1),
        "a middle line deleted": lines[0] + lines[2],
        "two lines merged (newline flipped)": lines[0] + lines[1][:-1] + b" " + lines[2],
        "the final newline flipped": good[:-1] + b"\x0b",
        "a line without checksum after checksummed ones": good + b'{"time":9.0,"from_version":3,'
                                                          b'"to_version":4,"reason":"x"}\n',
    }
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(RegistryCorruptError, match="serving_log.jsonl: line") as info:
            ModelRegistry(tmp_path)
        assert "restore the file from a backup" in str(info.value), what
        assert verify_registry(tmp_path) and verify_registry(tmp_path)[0].path == str(path), what
    # the last entry without its newline is complete (its checksum verifies): believed, and
    # the next append adds the newline before its own line
    path.write_bytes(good[:-1])
    again = ModelRegistry(tmp_path)
    assert again.active_version == 3 and len(again.serving_log()) == 3
    again.set_active(1, "after the lost newline")
    assert path.read_bytes().startswith(good) and ModelRegistry(tmp_path).active_version == 1
    assert len(ModelRegistry(tmp_path).serving_log()) == 4 and verify_registry(tmp_path) == []


def test_old_serving_log_lines_without_checksum_still_load(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.register(_state(1))
    reg.register(_state(2))
    old = (b'{"time":1.0,"from_version":null,"to_version":1,"reason":"initial"}\n'
           b'{"time":2.0,"from_version":1,"to_version":2,"reason":"manual"}\n')
    (tmp_path / "serving_log.jsonl").write_bytes(old)
    reg = ModelRegistry(tmp_path)
    assert reg.active_version == 2 and reg.version_at(1.5) == 1
    reg.set_active(1, "rollback")  # appended with a checksum after the old lines
    data = (tmp_path / "serving_log.jsonl").read_bytes()
    assert data.startswith(old) and b'"crc32"' in data.splitlines()[-1]
    assert [e["to_version"] for e in ModelRegistry(tmp_path).serving_log()] == [1, 2, 1]


def test_legacy_arrow_serving_log_is_read_then_folded_into_the_json_log(tmp_path):
    import pyarrow as pa

    reg = ModelRegistry(tmp_path)
    v1, v2 = reg.register(_state(1)), reg.register(_state(2))
    legacy = pa.table({"time": [1.0, 2.0], "from_version": pa.array([None, 1], pa.int64()),
                       "to_version": pa.array([1, 2], pa.int64()), "reason": ["initial", "manual"]})
    with pa.OSFile(str(tmp_path / "serving_log.arrow"), "wb") as f, pa.ipc.new_file(f, legacy.schema) as w:
        w.write_table(legacy)
    reg = ModelRegistry(tmp_path)
    assert reg.active_version == 2 and reg.version_at(1.5) == 1
    with open(tmp_path / "serving_log.arrow", "rb") as f:
        legacy_bytes = f.read()
    reg.set_active(v1, "rollback")
    assert not (tmp_path / "serving_log.arrow").exists()
    # a crash between folding it in and removing it leaves it behind: cleanup removes it
    (tmp_path / "serving_log.arrow").write_bytes(legacy_bytes)
    assert len(ModelRegistry(tmp_path).serving_log()) == 3
    reg.cleanup(keep_last_n=5)
    assert not (tmp_path / "serving_log.arrow").exists()
    log = ModelRegistry(tmp_path).serving_log()
    assert [(e["to_version"], e["reason"]) for e in log] == [(1, "initial"), (2, "manual"), (1, "rollback")]
    assert _chain_ok(log)


def test_two_registries_on_one_root_see_each_others_writes(tmp_path):
    """Each instance trusts its cached view first; a stale view is detected and re-read."""
    a, b = ModelRegistry(tmp_path), ModelRegistry(tmp_path)
    v1 = a.register(_state(1))
    a.set_active(v1, "initial")
    v2 = b.register(_state(2))  # a's cached table does not list v2 yet
    a.set_active(v2, "by a")
    for i in range(20):
        (a, b)[i % 2].set_active((v1, v2)[i % 2], f"turn {i}")
    for reg in (a, b):
        log = reg.serving_log()
        assert len(log) == 22 and _chain_ok(log) and reg.active_version == v2
    with pytest.raises(VersionNotFoundError):
        b.set_active(99, "missing")


_SWAPPER = textwrap.dedent("""
    import sys
    from vortex.training.registry import ModelRegistry
    reg = ModelRegistry(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[3])):
        reg.set_active(1 + i % 2, sys.argv[2])
""")


def test_concurrent_swaps_from_processes_lose_no_entry(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert [reg.register(_state(i)) for i in (1, 2)] == [1, 2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = [subprocess.Popen([sys.executable, "-P", "-c", _SWAPPER, str(tmp_path), f"p{i}", "60"],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(3)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:  # start together
        p.stdin.write("go\n")
        p.stdin.flush()
    for _ in range(60):  # and this process swaps too, through its own cached view
        reg.set_active(2, "parent")
    for p in procs:
        assert p.wait(120) == 0
        p.stdin.close()
        p.stdout.close()
    log = ModelRegistry(tmp_path).serving_log()
    assert sorted(e["reason"] for e in log) == sorted(["parent"] * 60 + [f"p{i}" for i in range(3) for _ in range(60)])
    assert _chain_ok(log)


def test_forked_child_takes_its_own_writer_lock(tmp_path):
    """flock belongs to the open file a fork shares: the child must re-open the lock file."""
    import multiprocessing

    reg = ModelRegistry(tmp_path)
    assert [reg.register(_state(i)) for i in (1, 2)] == [1, 2]
    reg.set_active(1, "initial")  # the lock file is open in this process before the fork
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=lambda: [reg.set_active(2, "child") for _ in range(100)])
    child.start()
    for _ in range(100):
        reg.set_active(1, "parent")
    child.join(120)
    assert child.exitcode == 0
    log = ModelRegistry(tmp_path).serving_log()
    assert len(log) == 201 and _chain_ok(log)


def test_cleanup_keeps_n_when_more_than_n(tmp_path):
    reg = ModelRegistry(tmp_path)
    for i in range(3):
        reg.register(_state(i))
    assert reg.cleanup(keep_last_n=5) == [] and reg.versions() == [1, 2, 3]
    assert reg.cleanup(keep_last_n=2) == [1] and reg.versions() == [2, 3]


def test_cleanup_removes_temp_files_of_killed_writes_only(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.register(_state(1))
    # what a kill -9 mid-write leaves: the shared helper's temp name, and the earlier prefix
    for name in (".vtx-versions.arrow.k2j4x9_q.tmp", ".tmp-v000002.safetensors.ab12cd"):
        with open(os.path.join(tmp_path, name), "wb") as f:
            f.write(b"half")
    with open(os.path.join(tmp_path, ".keep"), "wb") as f:
        f.write(b"not ours")
    assert reg.cleanup(keep_last_n=5) == []
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == [".keep", ".lock"]
    assert reg.versions() == [1]


def test_pinned_active_and_rollback_target_survive_cleanup(tmp_path):
    reg = ModelRegistry(tmp_path)
    for i in range(6):
        reg.register(_state(i), {"created_at": 1000.0 + i})
    reg.set_active(2, "initial")
    reg.set_active(4, "auto swap")  # 2 is where a rollback of 4 returns to
    reg.pin(1)
    reg.pin(1)  # idempotent
    assert reg.pinned() == [1] and ModelRegistry(tmp_path).pinned() == [1]  # persisted
    assert [r["version"] for r in reg.list_versions() if r["pinned"]] == [1] and reg.get(1)["pinned"]
    assert reg.cleanup(keep_last_n=1) == [3, 5]
    assert reg.versions() == [1, 2, 4, 6]
    assert reg.cleanup(keep_last_n=0, max_age_days=1.0, now=1e9) == [6]
    assert reg.versions() == [1, 2, 4]
    with pytest.raises(RegistryError, match="pinned"):
        reg.remove(1)
    reg.unpin(1)
    reg.unpin(1)  # idempotent
    assert reg.pinned() == [] and reg.cleanup(keep_last_n=0) == [1]
    with pytest.raises(VersionNotFoundError):
        reg.pin(1)
    with pytest.raises(ValueError, match="version"):
        reg.pin("2")
    # the pins live in the sealed metadata file: a flipped byte is caught like any other
    reg.pin(2)
    path = tmp_path / "versions.arrow"
    data = bytearray(path.read_bytes())
    data[data.index(b"[2]") + 1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryCorruptError, match="seal"):
        ModelRegistry(tmp_path)


@pytest.mark.parametrize("field, value", [
    ("samples", "many"), ("samples", -1), ("epochs", 2.5), ("parent", True), ("samples", 2 ** 70),
    ("val_loss", "low"), ("train_loss", [1.0]), ("created_at", float("inf")), ("trigger", 7),
    ("trigger", "\udc80"), ("status", "active"), ("colour", "red")])
def test_register_with_bad_metadata_names_the_field_and_writes_nothing(tmp_path, field, value):
    reg = ModelRegistry(tmp_path)
    reg.register(_state(0))
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match=field):
        reg.register(_state(1), {"trigger": "manual", field: value})
    assert sorted(os.listdir(tmp_path)) == before and reg.versions() == [1]
    assert reg.register(_state(1), {"samples": np.int64(5), "val_loss": np.float32(0.5)}) == 2
    assert reg.get(2)["samples"] == 5 and reg.get(2)["val_loss"] == 0.5


def test_versions_file_is_sealed_and_an_unsealed_old_one_is_validated(tmp_path):
    import pyarrow as pa

    reg = ModelRegistry(tmp_path)
    reg.register(_state(1), {"trigger": "initial"})
    path = tmp_path / "versions.arrow"
    sealed = path.read_bytes()
    assert b"#vortex-sha256:" in sealed[-90:]
    body = sealed[:sealed.rindex(b"\n#vortex-sha256:")]
    # a file written before the seal existed (plain Arrow IPC) still loads ...
    path.write_bytes(body)
    assert ModelRegistry(tmp_path).list_versions()[0]["trigger"] == "initial"
    # ... and is validated: a row no registry writes is refused, not believed
    table = pa.ipc.open_file(pa.py_buffer(body)).read_all()
    forged = table.set_column(table.schema.get_field_index("sha256"), "sha256", pa.array(["x" * 64]))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, forged.schema) as w:
        w.write_table(forged)
    path.write_bytes(sink.getvalue().to_pybytes())
    with pytest.raises(RegistryCorruptError, match="is not a sha256"):
        ModelRegistry(tmp_path)
    # one flipped bit anywhere in a sealed file is caught before Arrow parses it
    for pos in (0, len(body) // 2, len(sealed) - 5):
        damaged = bytearray(sealed)
        damaged[pos] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(RegistryCorruptError, match="versions.arrow"):
            ModelRegistry(tmp_path)


def test_set_active_with_expect_active_is_a_compare_and_swap(tmp_path):
    a, b = ModelRegistry(tmp_path), ModelRegistry(tmp_path)
    for i in range(3):
        a.register(_state(i))
    assert a.set_active(1, "initial", expect_active=None) is True
    assert a.set_active(2, "auto", expect_active=1) is True
    b.set_active(3, "a person in another process")  # a's cached view still says 2
    assert a.set_active(1, "auto", expect_active=2) is False
    assert a.active_version == 3 and [e["to_version"] for e in a.serving_log()] == [1, 2, 3]
    assert a.set_active(1, "auto", expect_active=3) is True


_HOLD_TEMP = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(600)
""")


def test_opening_removes_only_orphaned_temp_files(tmp_path):
    """Temp files of killed writers go; the temp file a live writer holds stays."""
    reg = ModelRegistry(tmp_path)
    reg.register(_state(1))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    # a live writer in another process (the pid in the name: this test's, which is alive, is
    # not what keeps it; its lock is: use a pid that is not running)
    live = tmp_path / ".vtx-versions.arrow.999999999-abcdef.tmp"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_TEMP, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        dead = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"],
                                stdout=subprocess.PIPE, text=True)
        dead_pid = int(dead.communicate()[0])
        orphans = [f".vtx-v000002.safetensors.{dead_pid}-Xy12Zq.tmp", ".vtx-versions.arrow.k2j4x9_q.tmp"]
        for name in orphans:
            (tmp_path / name).write_bytes(b"half")
        mine = tmp_path / f".vtx-buffer.arrow.{os.getpid()}-Ab12Cd.tmp"  # this live process's
        mine.write_bytes(b"in progress")
        ModelRegistry(tmp_path)
        left = sorted(n for n in os.listdir(tmp_path) if n.endswith(".tmp"))
        assert left == sorted([live.name, mine.name])
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    ModelRegistry(tmp_path)  # the holder died: its file is an orphan now
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".tmp")) == [mine.name]
