"""ModelRegistry: versions, checksums, serving log, cleanup, crash safety under kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from vortex.errors import ChecksumMismatchError, RegistryError, VersionNotFoundError
from vortex.training.registry import COLUMNS, ModelRegistry


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
    assert set(rows[1]) == set(COLUMNS)
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
    with pytest.raises(RegistryError, match="unreadable"):
        ModelRegistry(tmp_path)


def _chain_ok(log) -> bool:
    """Every entry's from_version is the previous entry's to_version (no entry lost)."""
    return all(b["from_version"] == a["to_version"] for a, b in zip(log, log[1:]))


def test_serving_log_is_json_lines_and_ignores_a_torn_last_line(tmp_path):
    reg = ModelRegistry(tmp_path)
    v1, v2 = reg.register(_state(1)), reg.register(_state(2))
    reg.set_active(v1, "initial", at=100.0)
    path = tmp_path / "serving_log.jsonl"
    complete = path.read_bytes()
    assert json.loads(complete) == {"time": 100.0, "from_version": None, "to_version": 1,
                                    "reason": "initial"}
    # a writer killed mid-line leaves a line without its newline: readers ignore it ...
    with open(path, "ab") as f:
        f.write(b'{"time":200.0,"from_version":1,"to_ver')
    for fresh in (reg, ModelRegistry(tmp_path)):
        assert fresh.active_version == 1 and len(fresh.serving_log()) == 1
    # ... and the next entry replaces it
    ModelRegistry(tmp_path).set_active(v2, "manual", at=300.0)
    data = path.read_bytes()
    assert data.startswith(complete) and [json.loads(line) for line in data.splitlines()] == [
        {"time": 100.0, "from_version": None, "to_version": 1, "reason": "initial"},
        {"time": 300.0, "from_version": 1, "to_version": 2, "reason": "manual"}]
    assert [(e["from_version"], e["to_version"]) for e in reg.serving_log()] == [(None, 1), (1, 2)]


def test_corrupt_serving_log_line_is_a_registry_error(tmp_path):
    reg = ModelRegistry(tmp_path)
    reg.set_active(reg.register(_state(1)), "initial")
    with open(tmp_path / "serving_log.jsonl", "ab") as f:
        f.write(b"garbage\n")
    with pytest.raises(RegistryError, match="line 2 is corrupt"):
        ModelRegistry(tmp_path)


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


_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from vortex.training.registry import ModelRegistry
    reg = ModelRegistry(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    print("ready", flush=True)
    while True:
        v = reg.register({"w": rng.standard_normal((64, 64)).astype(np.float32)},
                         {"trigger": "crash-test", "samples": 1})
        if v % 3 == 0:
            reg.set_active(v, "crash-test")
        if v % 7 == 0:
            reg.cleanup(keep_last_n=3)
""")


@pytest.mark.slow
def test_kill9_while_writing_registry_50_times(tmp_path):
    """kill -9 a process writing registry entries at 50 random moments: the registry always
    loads and every listed version verifies."""
    root = tmp_path / "reg"
    rnd = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    kills = 0
    for i in range(50):
        proc = subprocess.Popen([sys.executable, "-P", "-c", _WRITER, str(root), str(i)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        proc.stdout.close()
        kills += 1
        reg = ModelRegistry(root)
        rows = reg.list_versions()
        for row in rows:
            reg.verify(row["version"])
        if reg.active_version is not None:
            assert reg.active_version in reg.versions()
            reg.load()
    final = ModelRegistry(root)
    assert kills == 50 and len(final.versions()) > 0 and len(final.serving_log()) > 0


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
