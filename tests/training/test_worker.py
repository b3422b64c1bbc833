"""The DDP training worker, run as real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vortex.training import SampleBuffer
from vortex.training.models import mlp
from vortex.training.registry import ModelRegistry
from vortex.training.worker import CANDIDATE_FILE, RESULT_FILE, evaluate, per_sample_loss, train

KW = {"in_features": 8, "hidden": 16, "out_features": 3, "seed": 3}


def _data(n=360, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, y


def _snapshot(path, n=360):
    x, y = _data(n)
    buf = SampleBuffer(8, capacity=1000)
    buf.extend(x, y, errors=np.abs(np.random.default_rng(1).standard_normal(n)).astype(np.float32) % 1,
               episodes=np.arange(n) // 10)
    buf.snapshot().write_ipc(str(path))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_worker(tmp_path, world, out, extra=(), batch_size=24, device="cpu"):
    """Run the worker as ``world`` ranks (gloo on the CPU, NCCL on CUDA); return its candidate
    (None if it wrote none) and result."""
    port = _free_port()
    cmd = [sys.executable, "-P", "-m", "vortex.training.worker", "--snapshot", str(tmp_path / "snap.arrow"),
           "--out", str(out), "--factory", "vortex.training.models:mlp", "--factory-kwargs",
           json.dumps(KW), "--epochs", "3", "--batch-size", str(batch_size), "--seed", "11",
           "--lr", "0.01", "--nice", "0", "--device", device, *extra]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * world, outs
    with open(out / RESULT_FILE) as f:
        result = json.load(f)
    return (load_file(str(out / CANDIDATE_FILE)) if (out / CANDIDATE_FILE).exists() else None), result


@pytest.mark.slow
def test_two_gloo_ranks_match_one_rank(tmp_path):
    _snapshot(tmp_path / "snap.arrow")
    one, r1 = _run_worker(tmp_path, 1, tmp_path / "one")
    two, r2 = _run_worker(tmp_path, 2, tmp_path / "two")
    assert one.keys() == two.keys()
    start = mlp(**KW).state_dict()
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
        assert not torch.allclose(one[k], start[k])  # it did train
    assert r1["rank_count"] == 1 and r2["rank_count"] == 2
    assert r1["epoch_losses"] == pytest.approx(r2["epoch_losses"], rel=1e-5)
    assert r1["epoch_losses"][-1] < r1["epoch_losses"][0]
    # sacred positions 3, 6, 9 held out: 3 of every 9 sequence numbers
    assert r1["holdout_samples"] == 120 and r1["train_samples"] == 240
    v = r1["validation"]
    assert v["n"] == 120 and v["improvement_pct"] == 0.0  # no registry: compared with itself


@pytest.mark.slow
def test_worker_validates_against_registry_version_and_fails_cleanly(tmp_path):
    _snapshot(tmp_path / "snap.arrow")
    reg = ModelRegistry(tmp_path / "reg")
    v = reg.register(mlp(**KW))
    cand, res = _run_worker(tmp_path, 1, tmp_path / "out", ["--registry", str(reg.root),
                                                            "--init-version", str(v)])
    val = res["validation"]
    assert val["active_accuracy"] < val["candidate_accuracy"]
    x, y = _data()
    hold = (1 + np.arange(360) % 9) % 3 == 0
    model = mlp(**KW)
    model.load_state_dict(cand)
    scores, _ = evaluate(model, torch.from_numpy(x[hold]), torch.from_numpy(y[hold]), "classification")
    assert scores.mean() == pytest.approx(val["candidate_accuracy"])
    assert set(res["timings"]) >= {"import", "load", "train", "validate", "save"}
    # --candidate: the same validation of a given candidate, without training or writing one
    _, check = _run_worker(tmp_path, 1, tmp_path / "check", [
        "--registry", str(reg.root), "--init-version", str(v),
        "--candidate", str(tmp_path / "out" / CANDIDATE_FILE)])
    assert check["validation"] == val and check["epochs"] == 0 and check["train_loss"] is None
    assert not (tmp_path / "check" / CANDIDATE_FILE).exists()
    # a corrupted active version: the worker refuses it and exits non-zero
    with open(reg.weights_path(v), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x00")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    p = subprocess.run([sys.executable, "-P", "-m", "vortex.training.worker", "--snapshot",
                        str(tmp_path / "snap.arrow"), "--out", str(tmp_path / "bad"), "--factory",
                        "vortex.training.models:mlp", "--factory-kwargs", json.dumps(KW),
                        "--registry", str(reg.root), "--init-version", str(v)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "ChecksumMismatchError" in p.stderr
    assert not os.path.exists(tmp_path / "bad" / CANDIDATE_FILE)


def test_train_in_process_weighted_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = torch.randint(0, 2, (64,))
    w = torch.ones(64)
    w[:32] = 0.0  # zero-weight rows must not influence training at all
    m1 = mlp(4, 8, 2, seed=1)
    train(m1, x, y, w, task="classification", epochs=2, lr=0.05, batch_size=64, seed=0)
    m2 = mlp(4, 8, 2, seed=1)
    x2 = x.clone()
    x2[:32] = torch.randn(32, 4) * 100
    train(m2, x2, y, w, task="classification", epochs=2, lr=0.05, batch_size=64, seed=0)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b)


def test_regression_loss_and_divergence():
    out = torch.tensor([[1.0], [3.0]])
    assert torch.equal(per_sample_loss(out, torch.tensor([0.0, 1.0]), "regression"), torch.tensor([1.0, 4.0]))
    m = mlp(2, 4, 1, seed=0)
    x = torch.randn(32, 2)
    y = torch.full((32,), float("inf"))
    with pytest.raises(FloatingPointError, match="diverged"):
        train(m, x, y, torch.ones(32), task="regression", epochs=1, lr=0.1, batch_size=8, seed=0)


@pytest.mark.parametrize("frozen_steps", [0, 10])
def test_adam_matches_torch_optim_adam(frozen_steps):
    """Parameter for parameter; with ``frozen_steps``, the first layer's bias has no gradient
    for that many steps (a frozen head, an unused branch): it keeps its own step count, hence
    its own bias correction, as torch counts them."""
    from vortex.training.worker import Adam

    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    a, b = mlp(8, 16, 3, seed=5), mlp(8, 16, 3, seed=5)
    ours, ref = Adam(a.parameters(), lr=0.01), torch.optim.Adam(b.parameters(), lr=0.01)
    for step in range(25):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[step % 4::4]), y[step % 4::4]).backward()
            if step < frozen_steps:
                model[0].bias.grad = None
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(a[0].weight, mlp(8, 16, 3, seed=5)[0].weight)


def test_loss_totals_live_on_the_training_device_and_are_reduced_there(monkeypatch):
    """On CUDA under NCCL the all-reduced tensor must be a CUDA tensor; checked without a GPU
    on the 'meta' device (shapes only, no data): everything up to the all-reduce runs there."""
    import torch.distributed

    seen = []

    class Reduced(Exception):
        pass

    def all_reduce(tensor, *args, **kwargs):
        seen.append((tensor.device, tensor.dtype, tuple(tensor.shape)))
        raise Reduced  # a meta tensor holds no values to read back: stop here

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    model = mlp(4, 8, 2, seed=0).to("meta")
    x, y = torch.randn(64, 4, device="meta"), torch.zeros(64, dtype=torch.int64, device="meta")
    w = torch.ones(64)  # on the host, as the worker passes it: train() copies it to the device
    with pytest.raises(Reduced):
        train(model, x, y, w, task="classification", epochs=1, lr=0.01, batch_size=16,
              seed=0, rank=0, world_size=2)
    assert seen == [(torch.device("meta"), torch.float64, (2,))]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch reports none)")
def test_worker_trains_on_cuda(tmp_path):
    _snapshot(tmp_path / "snap.arrow")
    cpu, r_cpu = _run_worker(tmp_path, 1, tmp_path / "cpu")
    gpu, r_gpu = _run_worker(tmp_path, 1, tmp_path / "gpu", device="cuda")
    assert r_gpu["epoch_losses"] == pytest.approx(r_cpu["epoch_losses"], rel=1e-3)
    for k in cpu:  # the same training, up to float differences between the devices
        assert torch.allclose(cpu[k], gpu[k], atol=1e-3, rtol=1e-3), k


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices for two NCCL ranks")
def test_two_nccl_ranks_match_one_rank(tmp_path):
    _snapshot(tmp_path / "snap.arrow")
    one, r1 = _run_worker(tmp_path, 1, tmp_path / "one")
    two, r2 = _run_worker(tmp_path, 2, tmp_path / "two", device="cuda")
    assert r2["rank_count"] == 2 and r2["epoch_losses"] == pytest.approx(r1["epoch_losses"], rel=1e-3)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-3, rtol=1e-3), k


@pytest.mark.parametrize("args, needle", [
    (["--factory-kwargs", "{not json"], "--factory-kwargs: not JSON"),
    (["--factory-kwargs", "[1, 2]"], "--factory-kwargs: must be a JSON object"),
    (["--factory-kwargs", '{"in_features": 8, "colour": 1}'], "do not fit vortex.training.models:mlp"),
    (["--flux", "3"], "--flux: must be a JSON object"),
    (["--flux", '{"gama": 0.5}'], "--flux: unknown field(s) ['gama']"),
    (["--flux", '{"gamma": 5}'], "FluxConfig.gamma=5"),
    (["--factory", "vortex.training.models:nothing"], "--factory 'vortex.training.models:nothing'"),
    (["--candidate", "c.safetensors"], "--candidate needs --registry"),
])
def test_bad_worker_arguments_are_one_line_usage_errors(tmp_path, args, needle):
    base = ["--snapshot", "s.arrow", "--out", str(tmp_path), "--factory", "vortex.training.models:mlp",
            "--factory-kwargs", json.dumps(KW)]
    p = subprocess.run([sys.executable, "-P", "-m", "vortex.training.worker", *base, *args],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and needle in p.stderr.splitlines()[-1], p.stderr


_AUTOGROUP = """
import json, os, sys
from proc_support import autogroup
if sys.argv[1] == "leader":
    os.setsid()
before = autogroup("self")
from vortex.training.worker import lower_priority
lower_priority(int(sys.argv[2]), True)
print(json.dumps([before, autogroup("self"), os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)]))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="kernel without autogroups")
@pytest.mark.parametrize("session", ["leader", "member"])
def test_lower_priority_lowers_the_autogroup_only_of_a_session_of_its_own(session):
    """A training process leading its own session (torchrun's ranks) is alone in its
    autogroup, whose nice it lowers to 19, else SCHED_IDLE would rank it only against itself;
    one in its launcher's session leaves the shared group alone (the serving processes' too).
    """
    out = subprocess.run([sys.executable, "-c", _AUTOGROUP, session, "5"], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    before, after, policy, niceness = json.loads(out.stdout)
    assert policy == os.SCHED_IDLE and niceness >= 5
    if session == "leader":  # setsid gave it a group of its own, which it lowered
        assert before is not None and after == [before[0], 19]
    else:  # the shared group (the kernel's default one, under some CI runners) is untouched
        assert after == before
