"""The registry and the saved sample buffer on object storage: a real S3-compatible server
(moto's server mode) started by the test on loopback, reached through s3fs as a remote machine
would."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="s3fs (test extra) is needed to reach the S3 server")
pytest.importorskip("moto.server", reason="moto[server] (test extra) provides the S3 server")

from s3_support import s3, s3_server  # noqa: E402, F401  (the fixtures, shared)
from safetensors.numpy import save  # noqa: E402

from vortex.errors import (ChecksumMismatchError, RegistryCorruptError, RegistryError,  # noqa: E402
                           SnapshotFormatError)
from vortex.training.buffer import SampleBuffer  # noqa: E402
from vortex.training.registry import ModelRegistry, verify_registry  # noqa: E402
from vortex.training.registry.fsspec_store import FsspecStore  # noqa: E402


def _weights(value: float) -> bytes:
    return save({"w": np.full(4, value, np.float32)})


def test_a_registry_on_s3_serves_two_machines(s3):
    url, options, fs = s3
    trainer = ModelRegistry(url, storage_options=options)
    v1 = trainer.register(_weights(1.0), {"trigger": "manual", "val_accuracy": 0.8})
    v2 = trainer.register(_weights(2.0), {"parent": v1, "val_accuracy": 0.9})
    trainer.set_active(v1, "first")
    # another machine: its own client, nothing shared but the bucket
    worker = ModelRegistry(url, storage_options=options)
    assert worker.active_version == v1 and worker.load_bytes(v2) == _weights(2.0)
    assert trainer.set_active(v2, "better", expect_active=v1)
    assert worker.active_version == v2  # a poll sees the swap
    assert not worker.set_active(v1, "stale decision", expect_active=None)  # compare-and-swap
    assert [e["reason"] for e in worker.serving_log()] == ["first", "better"]
    # what is in the bucket, seen from outside
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(url[len("s3://"):]))
    assert names == ["serving_log.jsonl", "v000001.safetensors", "v000002.safetensors", "versions.arrow"]
    trainer.pin(v1)
    v3 = trainer.register(_weights(3.0))
    assert worker.cleanup(keep_last_n=1) == [] and worker.pinned() == [v1]  # active, its parent, pinned
    trainer.unpin(v1)
    assert trainer.cleanup(keep_last_n=1) == [] and trainer.versions() == [v1, v2, v3]
    trainer.set_active(v3)
    assert trainer.cleanup(keep_last_n=1) == [v1]
    assert not fs.exists(f"{url}/v000001.safetensors")
    assert verify_registry(url, storage_options=options) == []


def test_damage_on_s3_is_detected(s3):
    url, options, fs = s3
    reg = ModelRegistry(url, storage_options=options)
    v = reg.register(_weights(1.0))
    weights = bytearray(fs.cat_file(f"{url}/v000001.safetensors"))
    weights[-1] ^= 0x40
    fs.pipe_file(f"{url}/v000001.safetensors", bytes(weights))
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        reg.load(v)
    with pytest.raises(ChecksumMismatchError):
        reg.set_active(v)
    table = bytearray(fs.cat_file(f"{url}/versions.arrow"))
    table[len(table) // 2] ^= 0x01
    fs.pipe_file(f"{url}/versions.arrow", bytes(table))
    with pytest.raises(RegistryCorruptError, match="seal"):
        ModelRegistry(url, storage_options=options)
    assert [type(p) for p in verify_registry(url, storage_options=options)] == [RegistryCorruptError]


def test_a_stale_writer_on_s3_is_refused_not_lost(s3):
    """S3 has no lock: a write is conditional on the object this process last read."""
    url, options, _ = s3
    a = FsspecStore(url, options)
    b = FsspecStore(url, options)
    assert a.key("versions.arrow") == b.key("versions.arrow")  # both saw it missing
    b.write("versions.arrow", b"b's table")
    with pytest.raises(RegistryError, match="changed by another writer"):
        a.write("versions.arrow", b"a's table, from a stale view")
    assert a.read("versions.arrow") == b"b's table"
    a.key("versions.arrow")  # a looks again, then writes on what it saw
    a.write("versions.arrow", b"a's table")
    assert b.read("versions.arrow") == b"a's table"
    # an append on a stale view writes nothing and says so; the registry then re-reads
    key = b.key("log")
    b.write("log", b"line 1\n")
    assert a.append("log", 7, b"line 2\n", [("log", key)]) is None
    assert a.append("log", 7, b"line 2\n", [("log", a.key("log"))]) is not None
    assert b.read("log") == b"line 1\nline 2\n"


def test_swaps_from_two_registries_on_s3_keep_one_chain(s3):
    url, options, _ = s3
    first = ModelRegistry(url, storage_options=options)
    versions = [first.register(_weights(float(i))) for i in range(3)]
    second = ModelRegistry(url, storage_options=options)
    first.set_active(versions[0])
    second.set_active(versions[1])  # second's view is fresh; first's cached view is now stale
    first.set_active(versions[2])   # the conditional append fails, first re-reads and appends
    log = ModelRegistry(url, storage_options=options).serving_log()
    assert [(e["from_version"], e["to_version"]) for e in log] == [
        (None, versions[0]), (versions[0], versions[1]), (versions[1], versions[2])]


def test_the_sample_buffer_saves_to_and_loads_from_s3(s3):
    url, options, fs = s3
    buf = SampleBuffer(feature_dim=3, capacity=50)
    rng = np.random.default_rng(0)
    for i in range(70):  # wraps: the newest 50 are kept
        buf.push(rng.random(3).astype(np.float32), i % 10, 0.9, 0.1, episode=i // 7)
    spool = f"{url.rsplit('/', 1)[0]}/buffer.arrow"
    next_seq = buf.save(spool, storage_options=options)
    assert next_seq == 70 and fs.exists(spool)
    again = SampleBuffer.load(spool, storage_options=options)  # as another machine would
    mine, theirs = buf.snapshot(), again.snapshot()
    assert np.array_equal(mine.features, theirs.features) and np.array_equal(mine.seq, theirs.seq)
    assert again.next_seq == 70 and again.capacity == 50
    data = bytearray(fs.cat_file(spool))
    data[100] ^= 0x08
    fs.pipe_file(spool, bytes(data))
    with pytest.raises(SnapshotFormatError, match="seal"):
        SampleBuffer.load(spool, storage_options=options)
    with pytest.raises(FileNotFoundError):
        SampleBuffer.load(f"{spool}.missing", storage_options=options)


def test_the_models_command_operates_a_registry_on_s3(s3):
    """``vortex models --registry s3://...``: the operator's commands on the replicas' registry,
    run as a process, with the client options on the command line."""
    import json
    import subprocess

    url, options, fs = s3
    reg = ModelRegistry(url, storage_options=options)
    v1, v2 = reg.register(_weights(1.0)), reg.register(_weights(2.0))
    reg.set_active(v2, "trained")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def vortex(*argv: str, registry: str = url) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "models", "--registry",
                               registry, "--storage-options", json.dumps(options), *argv],
                              capture_output=True, text=True, timeout=120, env=env)

    listed = vortex("--json", "list")
    assert listed.returncode == 0, listed.stderr
    assert {v["version"]: v["status"] for v in json.loads(listed.stdout)["versions"]} == {
        v1: "candidate", v2: "active"}
    assert vortex("swap", str(v1), "--reason", "roll back by hand").returncode == 0
    assert ModelRegistry(url, storage_options=options).active_version == v1  # as a worker polls it
    assert vortex("verify").stdout.splitlines() == [f"version {v1}: ok", f"version {v2}: ok"]
    weights = bytearray(fs.cat_file(f"{url}/v000002.safetensors"))
    weights[-3] ^= 0x10
    fs.pipe_file(f"{url}/v000002.safetensors", bytes(weights))
    damaged = vortex("verify")
    assert damaged.returncode == 1 and f"version {v2}: damaged" in damaged.stdout
    # a prefix with no registry: one line, exit 1, and nothing created there
    missing = f"{url.rsplit('/', 1)[0]}/nothing-here"
    out = vortex("list", registry=missing)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and "nothing-here" in out.stderr
    assert not fs.exists(missing[len("s3://"):])


def test_vortex_status_reads_a_fleet_homes_shared_registry(s3, tmp_path):
    import json
    import subprocess

    url, options, _ = s3
    reg = ModelRegistry(url, storage_options=options)
    reg.register(_weights(1.0))
    reg.set_active(reg.register(_weights(2.0)), "trained")
    home = tmp_path / "home"  # a fleet machine's home: no models directory of its own
    home.mkdir()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def status(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "status", "--home", str(home), *argv],
                              capture_output=True, text=True, timeout=120, env=env)

    assert json.loads(status("--json").stdout)["models"] is None
    shared = status("--json", "--registry", url, "--storage-options", json.dumps(options))
    assert shared.returncode == 0, shared.stderr
    models = json.loads(shared.stdout)["models"]
    assert (models["active_version"], models["versions"], models["swaps"]) == (2, 2, 1)
    assert not (home / "models").exists()
