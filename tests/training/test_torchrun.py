"""The training worker under ``torchrun`` on two "machines" (two agents on loopback, each its
own process group and working directory), its snapshot and output on object storage (moto's
S3 server), checked from outside: the agents' exit statuses, the bucket, ``/proc``."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="s3fs (test extra) is needed to reach the S3 server")
pytest.importorskip("moto.server", reason="moto[server] (test extra) provides the S3 server")
pytest.importorskip("torch.distributed.run", reason="torch.distributed.run (torchrun) is not available")

import torch  # noqa: E402
from proc_support import alive, autogroup, proc_stat  # noqa: E402
from s3_support import S3_ENV, s3, s3_server  # noqa: E402, F401  (the fixtures, shared)
from safetensors.torch import load, load_file  # noqa: E402

import vortex  # noqa: E402
from vortex.config import BackgroundTrainingConfig, DistributedTrainingConfig  # noqa: E402
from vortex.errors import ConfigError  # noqa: E402
from vortex.training import BackgroundTrainingCoordinator, SampleBuffer  # noqa: E402
from vortex.training.launcher import WorkerLauncher  # noqa: E402
from vortex.training.models import mlp  # noqa: E402
from vortex.training.multinode import NODE_LOG  # noqa: E402
from vortex.training.registry import ModelRegistry  # noqa: E402
from vortex.training.worker import CANDIDATE_FILE, RESULT_FILE, STORAGE_OPTIONS_ENV  # noqa: E402

if not torch.distributed.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

KW = {"in_features": 8, "hidden": 16, "out_features": 3, "seed": 3}
FACTORY = "vortex.training.models:mlp"
#: the directory holding the vortex this test imported (CI installs it; src/ may hold no .so)
VORTEX_PATH = os.path.dirname(os.path.dirname(vortex.__file__))
#: a bound on liveness (a stuck agent), not a speed measurement
AGENT_TIMEOUT = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(n: int = 360):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, y, np.arange(n) // 10


def _snapshot():
    x, y, episodes = _samples()
    buf = SampleBuffer(8, capacity=1000)
    buf.extend(x, y, episodes=episodes)
    return buf.snapshot()


def _launcher(registry: str, **config) -> WorkerLauncher:
    cfg = BackgroundTrainingConfig(**{"num_epochs": 2, "batch_size": 24, "worker_nice": 0,
                                      "fork_server": False, **config})
    return WorkerLauncher(lambda: cfg, FACTORY, KW, registry, threading.Event())


def _env(options) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VORTEX_PARENT_PID"}
    env.update(S3_ENV, PYTHONPATH=VORTEX_PATH, VORTEX_WORKER_LOG="INFO",
               **{STORAGE_OPTIONS_ENV: json.dumps(options)})
    return env


def _start_agents(tmp_path, args, options, nodes=2) -> list[tuple[subprocess.Popen, str]]:
    """``nodes`` torchrun agents of one rendezvous, each a session leader in its own working
    directory with its own log (the node's log: its ranks write there too)."""
    endpoint = f"127.0.0.1:{_free_port()}"
    rdzv_id = uuid.uuid4().hex[:8]
    agents = []
    for node in range(nodes):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        log = str(cwd / "agent.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
                 "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                 "--rdzv-id", rdzv_id, "--max-restarts", "0", "-m", "vortex.training.worker", *args],
                cwd=cwd, env=_env(options), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        agents.append((proc, log))
    return agents


def _wait_agents(agents) -> list[int]:
    deadline = time.monotonic() + AGENT_TIMEOUT
    try:
        return [proc.wait(timeout=max(0.1, deadline - time.monotonic())) for proc, _ in agents]
    finally:
        for proc, _ in agents:  # whatever is left of a stuck node, its ranks included
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _read(path) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _ranks_of(agent_pid: int) -> dict[int, int]:
    """The worker processes the agent started, read from /proc: {rank: pid}."""
    ranks = {}
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or int(proc_stat(entry)[1]) != agent_pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            ranks[int(env[b"RANK"])] = int(entry)
    return ranks


def test_two_machines_train_from_and_into_the_bucket_like_a_local_run(tmp_path, s3):
    url, options, fs = s3
    runs = url.rsplit("/", 1)[0] + "/runs"
    snap = _snapshot()
    snap.write_ipc(f"{runs}/snapshot.arrow", storage_options=options)
    snap.write_ipc(str(tmp_path / "snapshot.arrow"))
    launcher = _launcher(url)
    # the same run on this machine: two ranks started by the local launcher
    launcher.run(str(tmp_path / "local"), str(tmp_path / "snapshot.arrow"), None, 2, run_id=1)
    local = load_file(str(tmp_path / "local" / CANDIDATE_FILE))
    local_result = json.loads(_read(tmp_path / "local" / RESULT_FILE))

    out = f"{runs}/run-1"
    agents = _start_agents(tmp_path, launcher.worker_args(out, f"{runs}/snapshot.arrow", None, 1), options)
    codes = _wait_agents(agents)
    logs = [_read(log) for _, log in agents]
    assert codes == [0, 0], logs
    # each node's log holds its own rank's lines; nothing but the outputs reached the bucket
    assert sorted(rank for log in logs for rank in {f"rank {r} epoch 2/2" for r in (0, 1)} if rank in log) \
        == ["rank 0 epoch 2/2", "rank 1 epoch 2/2"]
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(out[len("s3://"):])) == [CANDIDATE_FILE, RESULT_FILE]
    result = json.loads(fs.cat_file(f"{out}/{RESULT_FILE}"))
    assert result["rank_count"] == 2 and result["epochs"] == 2
    remote = load(fs.cat_file(f"{out}/{CANDIDATE_FILE}"))
    model = mlp(**KW)
    model.load_state_dict(remote)  # strict: every tensor of the factory's model, no other
    assert remote.keys() == local.keys()
    for name in local:  # two ranks over two agents compute what two local ranks do, bit for bit
        assert torch.equal(remote[name], local[name]), name
    assert result["epoch_losses"] == local_result["epoch_losses"]
    assert not torch.equal(remote["0.weight"], mlp(**KW).state_dict()["0.weight"])  # it trained

    # the coordinator's check of a candidate against a registered version, both on the bucket
    registry = ModelRegistry(url, storage_options=options)
    version = registry.register(mlp(**KW))
    check = subprocess.run(
        [sys.executable, "-P", "-m", "vortex.training.worker",
         *launcher.worker_args(f"{runs}/check", f"{runs}/snapshot.arrow", version, 1,
                               candidate=f"{out}/{CANDIDATE_FILE}")],
        env={**_env(options), "PYTHONPATH": VORTEX_PATH}, capture_output=True, text=True,
        timeout=AGENT_TIMEOUT)
    assert check.returncode == 0, check.stderr
    checked = json.loads(fs.cat_file(f"{runs}/check/{RESULT_FILE}"))
    assert checked["validation"]["candidate_accuracy"] == result["validation"]["candidate_accuracy"]
    assert checked["epochs"] == 0 and not fs.exists(f"{runs}/check/{CANDIDATE_FILE}")


@pytest.mark.parametrize("victim", ["rank 0", "rank 1", "node of rank 1"])
def test_a_rank_or_node_killed_mid_run_leaves_no_commit_marker(tmp_path, s3, victim):
    """``victim`` is SIGKILLed once every rank has trained an epoch: a rank (rank 1: rank 0,
    the writer, must not commit), or the torchrun agent of rank 1 (a machine lost: its rank
    dies with it, by the worker's parent-death signal; torchrun starts each rank in a session
    of its own, so no process-group kill reaches it). A ``result.json`` of an earlier run into
    the same place is gone too: the marker only ever describes this run.
    """
    url, options, fs = s3
    runs = url.rsplit("/", 1)[0] + "/runs"
    _snapshot().write_ipc(f"{runs}/snapshot.arrow", storage_options=options)
    out = f"{runs}/run-2"
    fs.pipe_file(f"{out}/{RESULT_FILE}", b'{"stale": true}')
    # far more epochs than the test waits for: the run is under way when the kill lands
    args = _launcher(url, num_epochs=100_000).worker_args(out, f"{runs}/snapshot.arrow", None, 2)
    agents = _start_agents(tmp_path, args, options)
    ranks: dict[int, int] = {}
    try:
        deadline = time.monotonic() + AGENT_TIMEOUT
        while not all("epoch 1/100000" in _read(log) for _, log in agents):
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in agents), \
                [_read(log) for _, log in agents]
            time.sleep(0.05)
        agent_of = {rank: proc.pid for proc, _ in agents for rank in _ranks_of(proc.pid)}
        ranks = {rank: pid for proc, _ in agents for rank, pid in _ranks_of(proc.pid).items()}
        assert sorted(ranks) == [0, 1], ranks
        if os.path.exists("/proc/self/autogroup"):  # a rank's SCHED_IDLE yields to serving:
            for rank, pid in ranks.items():  # in its agent's autogroup, or alone in its own (a
                group = autogroup(pid)  # session leader, as torchrun starts ranks), at 19
                leader = int(proc_stat(pid)[3]) == pid
                assert group is not None and group[1] == 19 if leader else group == autogroup(agent_of[rank])
        os.kill(agent_of[1] if victim == "node of rank 1" else ranks[int(victim[-1])], signal.SIGKILL)
    finally:
        codes = _wait_agents(agents)
    logs = [_read(log) for _, log in agents]
    assert all(code != 0 for code in codes), (codes, logs)
    assert not any(alive(pid) for pid in ranks.values())
    assert not fs.exists(f"{out}/{RESULT_FILE}"), logs
    if victim.startswith("rank"):  # the killed rank's agent says how it ended
        assert any("Signal 9 (SIGKILL)" in log or "exitcode  : -9" in log for log in logs), logs


def test_unusable_locations_are_named_in_the_worker_log(tmp_path, s3):
    url, options, fs = s3
    runs = url.rsplit("/", 1)[0] + "/runs"
    _snapshot().write_ipc(f"{runs}/snapshot.arrow", storage_options=options)
    launcher = _launcher(url)
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    # one attempt, so the unreachable case fails at once instead of after botocore's retries
    unreachable = {**options, "endpoint_url": closed,
                   "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    cases = [  # (snapshot, out, storage options, exit status, what the log must say)
        ("nosuch://bucket/snapshot.arrow", f"{runs}/a", options, 2,
         "--snapshot 'nosuch://bucket/snapshot.arrow': no fsspec filesystem handles the protocol 'nosuch'"),
        (f"{runs}/snapshot.arrow", "nosuch://bucket/out", options, 2,
         "--out 'nosuch://bucket/out': no fsspec filesystem handles the protocol 'nosuch'"),
        (f"{runs}/missing.arrow", f"{runs}/b", options, 1,
         f"FileNotFoundError: --snapshot '{runs}/missing.arrow': no such file or object"),
        (f"{runs}/snapshot.arrow", f"{runs}/c", unreachable, 1,
         f"TrainingError: --out '{runs}/c' could not be reached: EndpointConnectionError"),
    ]
    for snapshot, out, opts, status, message in cases:
        p = subprocess.run([sys.executable, "-P", "-m", "vortex.training.worker",
                            *launcher.worker_args(out, snapshot, None, 0)],
                           env=_env(opts), capture_output=True, text=True, timeout=AGENT_TIMEOUT)
        assert p.returncode == status and message in p.stderr, (snapshot, out, p.stderr)
    assert fs.find(runs[len("s3://"):]) == [f"{runs[len('s3://'):]}/snapshot.arrow"]  # nothing written


def test_a_filesystem_url_that_is_no_object_store_is_written_whole(tmp_path):
    """``local://`` goes through fsspec like SFTP would (a temporary name moved over the file,
    not one PUT): the output directory is made, both files land, no temporary file is left."""
    _snapshot().write_ipc(str(tmp_path / "snapshot.arrow"))
    out = tmp_path / "deep" / "run-3"
    args = _launcher(str(tmp_path / "models")).worker_args(
        f"local://{out}", f"local://{tmp_path / 'snapshot.arrow'}", None, 3)
    p = subprocess.run([sys.executable, "-P", "-m", "vortex.training.worker", *args],
                       env=_env({}), capture_output=True, text=True, timeout=AGENT_TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == [CANDIDATE_FILE, RESULT_FILE]
    mlp(**KW).load_state_dict(load_file(str(out / CANDIDATE_FILE)))
    assert json.loads(_read(out / RESULT_FILE))["rank_count"] == 1


# -- a coordinator's run over two machines: its own node and a join agent's ------------------

def _two_machine_coordinator(tmp_path, s3, **config) -> tuple[BackgroundTrainingCoordinator, str]:
    """A coordinator whose runs take 2 nodes of 1 rank, its registry and run URL on the bucket;
    it and its run URL."""
    url, options, _ = s3
    runs = url.rsplit("/", 1)[0] + "/runs"
    cfg = BackgroundTrainingConfig(**{
        "num_epochs": 2, "batch_size": 24, "worker_nice": 0, "fork_server": False,
        "min_samples_for_training": 50, "run_timeout_secs": AGENT_TIMEOUT,
        "distributed": DistributedTrainingConfig(run_url=runs, nnodes=2, nproc_per_node=1,
                                                 rdzv_endpoint=f"127.0.0.1:{_free_port()}",
                                                 join_timeout_secs=60),
        **config})
    coordinator = BackgroundTrainingCoordinator(cfg, mlp(**KW), FACTORY, tmp_path / "home", 8,
                                                factory_kwargs=KW,
                                                registry=ModelRegistry(url, storage_options=options))
    x, y, episodes = _samples()
    coordinator.add_samples(x, y, episodes=episodes)
    return coordinator, runs


def _join_agent(tmp_path, runs, options, name, *extra) -> tuple[subprocess.Popen, str]:
    """``vortex training join`` as the second machine: a session of its own, its own working
    directory (returned) and log."""
    work = tmp_path / name
    work.mkdir()
    with open(work / "agent.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "vortex", "training", "join", "--run-url", runs,
             "--storage-options", json.dumps(options), "--home", str(work / "home"),
             "--poll-secs", "0.1", *extra], cwd=work, env=_env({}), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, str(work)


def _node_logs(work: str) -> list[str]:
    return [_read(p) for p in glob.glob(os.path.join(work, "home", "nodes", "run-*", NODE_LOG))]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(proc_stat(entry)[1]) == pid:
                found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return found


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_a_coordinator_run_over_two_machines_registers_the_candidate_of_both_ranks(tmp_path, s3):
    _, options, fs = s3
    coordinator, runs = _two_machine_coordinator(tmp_path, s3)
    agent, work = _join_agent(tmp_path, runs, options, "machine2")
    try:
        run = coordinator.run_once()
        assert run.error is None and run.ranks == 2, (run.error, _read(os.path.join(work, "agent.log")))
        # the candidate is in the registry (registered, whether or not it beat the initial model)
        assert [v["version"] for v in coordinator.registry.list_versions()] == [1, run.version] == [1, 2]
        assert run.status in ("registered", "swapped", "rejected")
        # the second machine trained one of the two ranks, its log in its own working directory
        logs = _node_logs(work)
        assert len(logs) == 1 and len(re.findall(r"rank [01] epoch 2/2", logs[0])) == 1, logs
        assert not fs.exists(f"{runs}/run-{run.run_id}")  # the run's files are gone from the bucket
        assert agent.poll() is None  # the agent waits for the next run...
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=AGENT_TIMEOUT) == 0  # ...until told to stop
    finally:
        _stop(agent)


def _a_long_run_over_two_machines(tmp_path, s3) -> tuple:
    """A coordinator's run (a thread; its outcome appended to the list) over this machine and
    a join agent's (the second machine), training until stopped: (coordinator, its run URL,
    agent, agent's working directory, thread, outcome list)."""
    _, options, _ = s3
    coordinator, runs = _two_machine_coordinator(tmp_path, s3, num_epochs=100_000)
    agent, work = _join_agent(tmp_path, runs, options, "machine2")
    result: list = []
    thread = threading.Thread(target=lambda: result.append(coordinator.run_once()))
    thread.start()
    return coordinator, runs, agent, work, thread, result


def _training_on_both_machines(coordinator, agent, work: str, thread: threading.Thread, result: list) -> list[int]:
    """Once a rank has logged its first epoch: the run's processes on both machines, each
    torchrun node and its rank (four)."""
    deadline = time.monotonic() + AGENT_TIMEOUT
    while not any("epoch 1/100000" in log for log in _node_logs(work)):
        assert time.monotonic() < deadline and agent.poll() is None and thread.is_alive(), \
            (_node_logs(work), result)
        time.sleep(0.05)
    nodes = _children(agent.pid) + coordinator.worker_pids()
    processes = nodes + [pid for node in nodes for pid in _ranks_of(node).values()]
    assert len(processes) == 4, processes
    return processes


def test_a_join_agent_killed_mid_run_fails_the_run_cleanly_and_a_fresh_agent_serves_the_next(tmp_path, s3):
    """The second machine lost mid-run (its agent SIGKILLed: its node and rank die with it):
    the coordinator's run fails, nothing is registered, no node or rank is left anywhere."""
    _, options, fs = s3
    coordinator, runs, agent, work, thread, result = _a_long_run_over_two_machines(tmp_path, s3)
    processes: list[int] = []
    try:
        processes = _training_on_both_machines(coordinator, agent, work, thread, result)
        os.kill(agent.pid, signal.SIGKILL)
    finally:
        thread.join(AGENT_TIMEOUT)
        _stop(agent)
    assert not thread.is_alive()
    run, = result
    assert run.status == "failed" and run.version is None, run
    assert "torchrun node" in run.error, run.error
    assert [v["version"] for v in coordinator.registry.list_versions()] == [1]  # nothing registered
    assert not any(alive(pid) for pid in processes)  # no node, no rank left on either machine
    assert not fs.exists(f"{runs}/run-{run.run_id}")

    coordinator.config = dataclasses.replace(coordinator.config, num_epochs=2)
    fresh, work = _join_agent(tmp_path, runs, options, "machine2-again", "--once", "--json")
    try:
        run = coordinator.run_once()
        assert run.error is None and run.ranks == 2 and run.version == 2, run.error
        assert fresh.wait(timeout=AGENT_TIMEOUT) == 0  # --once: one node, which succeeded
        outcomes = [json.loads(line) for line in _read(os.path.join(work, "agent.log")).splitlines()
                    if line.startswith("{")]  # --json: one object per node, among the log lines
        assert len(outcomes) == 1 and outcomes[0]["ok"], outcomes
        assert outcomes[0]["rdzv_id"].startswith(f"run-{run.run_id}-"), outcomes
    finally:
        _stop(fresh)


def test_distributed_settings_are_checked_where_they_are_given(tmp_path):
    bad = [  # (keywords, field named in the error)
        ({"run_url": "/shared/runs"}, "DistributedTrainingConfig.run_url='/shared/runs'"),
        ({"run_url": "s3://b/runs", "nnodes": 0}, "DistributedTrainingConfig.nnodes=0"),
        ({"nproc_per_node": 1.5}, "DistributedTrainingConfig.nproc_per_node=1.5"),
        ({"rdzv_endpoint": "host"}, "DistributedTrainingConfig.rdzv_endpoint='host'"),
        ({"rdzv_endpoint": ":29400"}, "DistributedTrainingConfig.rdzv_endpoint=':29400'"),
        ({"rdzv_endpoint": "host:99999"}, "DistributedTrainingConfig.rdzv_endpoint='host:99999'"),
        ({"join_timeout_secs": 0}, "DistributedTrainingConfig.join_timeout_secs=0"),
        ({"nnodes": 2}, "DistributedTrainingConfig.nnodes=2: needs run_url"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            DistributedTrainingConfig(**kwargs)
    with pytest.raises(ConfigError, match=r"BackgroundTrainingConfig\.distributed="):
        BackgroundTrainingConfig(distributed={"nnodes": 2})
    cfg = BackgroundTrainingConfig.from_dict({"distributed": {"run_url": "s3://b/runs", "nnodes": 3}})
    assert cfg.distributed == DistributedTrainingConfig(run_url="s3://b/runs", nnodes=3)
    assert BackgroundTrainingConfig().distributed.run_url is None  # local runs by default
    # the ranks on the other machines read the registry: a local one cannot do
    with pytest.raises(ConfigError, match=r"BackgroundTrainingConfig.distributed.run_url='s3://b/runs'"):
        BackgroundTrainingCoordinator(cfg, mlp(**KW), FACTORY, tmp_path / "home", 8, factory_kwargs=KW)


def test_the_join_command_names_a_bad_value(tmp_path):
    cases = [  # (arguments, what stderr must say)
        ([], "--run-url is required"),
        (["--run-url", str(tmp_path)], f"--run-url {str(tmp_path)!r}: must be a URL"),
        (["--run-url", "nosuch://b/runs"], "--run-url 'nosuch://b/runs': Protocol not known: nosuch"),
        (["--run-url", "s3://b/runs", "--storage-options", "{not json"], "'{not json' is not JSON"),
        (["--run-url", "s3://b/runs", "--poll-secs", "0"], "'0': must be a finite number > 0"),
    ]
    for argv, message in cases:
        p = subprocess.run([sys.executable, "-P", "-m", "vortex", "training", "join", "--once", *argv],
                           env=_env({}), capture_output=True, text=True, timeout=AGENT_TIMEOUT)
        assert p.returncode == 2 and message in p.stderr, (argv, p.stderr)


def test_a_join_agent_skips_launches_too_old_to_join_and_files_that_are_no_launch(tmp_path, s3):
    _, options, fs = s3
    runs = s3[0].rsplit("/", 1)[0] + "/runs"
    old = {"rdzv_id": "run-1-old", "created_at": time.time() - 120, "join_timeout_secs": 60,
           "rdzv_endpoint": "127.0.0.1:1", "nnodes": 2, "nproc_per_node": 1, "run_timeout_secs": 60,
           "worker_threads": 1, "worker_args": []}
    fs.pipe_file(f"{runs}/run-1/launch.json", json.dumps(old).encode())
    fs.pipe_file(f"{runs}/run-2/launch.json", b"{not json")
    agent, work = _join_agent(tmp_path, runs, options, "machine2")
    try:
        deadline = time.monotonic() + AGENT_TIMEOUT
        log = os.path.join(work, "agent.log")
        while not ("join timeout" in _read(log) and "not a launch file" in _read(log)):
            assert time.monotonic() < deadline and agent.poll() is None, _read(log)
            time.sleep(0.05)
        time.sleep(0.5)  # a few more polls: each file is read, skipped and logged once
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=AGENT_TIMEOUT) == 0
    finally:
        _stop(agent)
    text = _read(log)
    assert text.count("run-1/launch.json: written") == 1 and text.count("not a launch file") == 1, text
    assert not os.path.exists(os.path.join(work, "home", "nodes", "run-1-old"))  # no node started


def test_cancelling_a_run_over_two_machines_ends_every_node_and_rank(tmp_path, s3):
    """``cancel_run()`` kills this machine's node (its group; its rank by the parent-death
    signal); the other machine's rank loses its peer and its node fails: nothing is left."""
    _, options, fs = s3
    coordinator, runs, agent, work, thread, result = _a_long_run_over_two_machines(tmp_path, s3)
    processes: list[int] = []
    try:
        deadline = time.monotonic() + AGENT_TIMEOUT
        processes = _training_on_both_machines(coordinator, agent, work, thread, result)
        assert coordinator.cancel_run()
        thread.join(AGENT_TIMEOUT)
        while any(alive(pid) for pid in processes):  # the other machine notices its peer's end
            assert time.monotonic() < deadline, [pid for pid in processes if alive(pid)]
            time.sleep(0.05)
        assert agent.poll() is None  # the agent itself waits for the next run
    finally:
        thread.join(AGENT_TIMEOUT)
        _stop(agent)
    run, = result
    assert run.status == "cancelled" and run.version is None, run
    assert [v["version"] for v in coordinator.registry.list_versions()] == [1]
    assert not fs.exists(f"{runs}/run-{run.run_id}")
