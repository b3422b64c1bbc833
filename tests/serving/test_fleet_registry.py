"""Replicas on several machines follow ONE model registry on shared storage
(docs/DISTRIBUTED.md): machine a's control plane (the lease holder, in this process) trains,
registers, swaps and rolls back on ``<fleet_url>/models`` on moto's S3 server; machine b is
two serving processes on another home (``VortexService``, as a uvicorn worker runs it) that
answer a request every 50 ms and report the version that answered it. Nothing of the registry
is on either home.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="s3fs (test extra) is needed to reach the S3 server")
pytest.importorskip("moto.server", reason="moto[server] (test extra) provides the S3 server")

pytestmark = pytest.mark.slow  # processes, a server, a training run

from s3_support import S3_ENV, s3, s3_server  # noqa: E402, F401
from serving.test_replicas import DIM, TTL, homes  # noqa: E402, F401  (homes: the fixture)

from vortex import BackgroundTrainingConfig  # noqa: E402
from vortex.errors import ConfigError  # noqa: E402
from vortex.serving import ServiceSpec  # noqa: E402
from vortex.serving.control import ControlStandby  # noqa: E402

ENV = {**os.environ, **S3_ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
FOLLOW_SECS = 0.2  # the workers' poll of the shared serving log (a HEAD)
BOUND = 30.0  # a swap reaches machine b's workers within this (measured: about a second)


def _configure(orch):
    orch.with_background_trainer(BackgroundTrainingConfig(
        min_samples_for_training=500, training_interval_secs=3600, num_epochs=8, learning_rate=1e-2,
        batch_size=32))


def _spec(home, url, options, replica, **kw):
    return ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=DIM, n_classes=3,
                       factory_kwargs={"in_features": DIM, "out_features": 3}, fleet_url=url,
                       storage_options=options, replica_id=replica, lease_ttl_secs=TTL,
                       spool_interval_secs=0.2, **kw)


_MACHINE_B = textwrap.dedent("""
    import json, logging, os, sys, time
    import numpy as np
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # its log, read by the test
    from vortex.serving import ServiceSpec, VortexService
    spec = ServiceSpec(home={home!r}, model_factory="vortex.training.models:mlp", feature_dim={dim},
                       n_classes=3, factory_kwargs={{"in_features": {dim}, "out_features": 3}},
                       fleet_url={url!r}, storage_options=json.loads({options!r}), replica_id="b",
                       lease_ttl_secs={ttl}, spool_interval_secs=0.2)
    service = VortexService(spec, follow_interval={follow}, standby_interval=0.1)
    service.start()
    x = np.zeros({dim}, np.float32)
    while True:
        answer = service.running.infer(x)  # a request, answered by the version it names
        report = {{"answered_by": answer.model_version, "role": service.standby.role, **service.running.status()}}
        with open({out!r} + ".tmp", "w") as f:
            json.dump(report, f)
        os.replace({out!r} + ".tmp", {out!r})
        time.sleep(0.05)
""")


class MachineB:
    """Two serving processes of machine b's home."""

    def __init__(self, home, url, options, tmp_path) -> None:
        self.reports = [tmp_path / f"b{i}.json" for i in range(2)]
        self.logs = [tmp_path / f"b{i}.log" for i in range(2)]
        self.procs = []
        for out, log in zip(self.reports, self.logs, strict=True):
            code = _MACHINE_B.format(home=str(home), dim=DIM, url=url, options=json.dumps(options), ttl=TTL,
                                     follow=FOLLOW_SECS, out=str(out))
            with open(log, "wb") as f:
                self.procs.append(subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=f,
                                                   stderr=subprocess.STDOUT))

    def report(self) -> list[dict | None]:
        out = []
        for proc, path in zip(self.procs, self.reports, strict=True):
            assert proc.poll() is None, f"machine b's worker exited: {self.log()[-3000:]}"
            try:
                out.append(json.loads(path.read_text()))
            except FileNotFoundError:
                out.append(None)
        return out

    def serving(self) -> list[int | None]:
        return [r and r["answered_by"] for r in self.report()]

    def wait_serving(self, version: int, timeout: float = BOUND) -> float:
        """Seconds until both workers answered with ``version``."""
        start = time.monotonic()
        _wait_for(lambda: self.serving() == [version, version], timeout)
        return time.monotonic() - start

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def signal(self, sig: int) -> None:
        for p in self.procs:
            os.kill(p.pid, sig)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(10)


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(0.05)


def _learnable(n, seed=0):
    """Samples whose class is the largest of the first three features: an untrained model
    scores a third, a trained one far more."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x, np.argmax(x[:, :3], axis=1).astype(np.int64)


def _watch_training_workers(trainer):
    """A thread reading the command line and environment of every training worker process
    of ``trainer`` (as /proc shows them) until its ``stop`` is set."""
    def read(pid, what):
        with open(f"/proc/{pid}/{what}", "rb") as f:
            return f.read().decode(errors="replace")

    def loop():
        while not thread.stop.is_set():
            for pid in trainer.worker_pids():
                try:
                    thread.procs.setdefault(pid, (read(pid, "cmdline"), read(pid, "environ")))
                except (FileNotFoundError, ProcessLookupError):
                    pass
            time.sleep(0.01)

    thread = threading.Thread(target=loop)
    thread.stop, thread.procs = threading.Event(), {}
    thread.start()
    return thread


def test_machine_b_serves_what_machine_a_trains_swaps_and_rolls_back_on_the_shared_registry(s3, homes, tmp_path):
    url, options, fs = s3
    home_a, home_b, _ = homes
    spec_a = _spec(home_a, url, options, "a", configure=_configure)
    registry_url = spec_a.shared_registry
    assert registry_url == f"{url}/models"
    a = ControlStandby(spec_a, interval=0.1)
    a.start()
    b = None
    try:
        assert a.acquired.wait(120) and a.lease.fencing == 1  # machine a holds the fleet's lease
        trainer = a.plane.orchestrator.trainer
        assert trainer.registry.root == registry_url and trainer.registry.active_version == 1  # initial model
        b = MachineB(home_b, url, options, tmp_path)
        b.wait_serving(1, timeout=180)  # (their start imports torch: a while on a loaded machine)
        assert {r["role"] for r in b.report()} <= {"spool", "standby"}  # b never runs a control plane

        # the samples reach the training threshold: a's control plane trains (the worker
        # process reads version 1 from the bucket), registers and swaps version 2; b's
        # workers answer with it
        seen = _watch_training_workers(trainer)
        trainer.add_samples(*_learnable(600))
        assert trainer.wait_idle(300)
        seen.stop.set()
        seen.join()
        # the storage options reach the worker, never on its command line (which every user
        # of the machine reads in /proc): forked by the fork server, through its pipe (so not
        # even in /proc/<pid>/environ, the server's start-up environment); a fresh
        # interpreter, in its environment
        endpoint = options["endpoint_url"]
        assert seen.procs and all(endpoint not in cmdline for cmdline, _ in seen.procs.values())
        assert all(endpoint in environ for cmdline, environ in seen.procs.values()
                   if "vortex.training.worker" in cmdline)
        run = trainer.stats().last_run
        assert run["swapped"] and run["version"] == 2, run
        took = {"train swap": b.wait_serving(2)}
        # a rollback by a's control plane
        trainer.swap_to_version(1, "rollback (test)")
        took["rollback"] = b.wait_serving(1)
        # an operator's swap on the bucket: b's workers and a's control plane follow it
        subprocess.run([sys.executable, "-m", "vortex", "models", "--registry", registry_url,
                        "--storage-options", json.dumps(options), "swap", "2"], env=ENV, check=True,
                       capture_output=True)
        took["cli swap"] = b.wait_serving(2)
        _wait_for(lambda: trainer.slot.version == 2, BOUND)
        print(f"machine b followed within {took} s")

        # version 3 is swapped in by a, then one byte of its weights object flips on the
        # bucket before b reads it (b stopped meanwhile): b refuses it, keeps answering with 2
        b.signal(signal.SIGSTOP)
        try:
            v3 = trainer.registry.register(trainer.slot.get()[1], {"trigger": "manual"})
            trainer.swap_to_version(v3, "manual (test)")
            weights = f"{registry_url}/v{v3:06d}.safetensors"
            data = bytearray(fs.cat_file(weights))
            data[len(data) // 2] ^= 0x01
            fs.pipe_file(weights, bytes(data))
        finally:
            b.signal(signal.SIGCONT)
        _wait_for(lambda: all(r["follow_error"] and f"model version {v3} refused" in r["follow_error"]
                              for r in b.report()), BOUND)
        for _ in range(20):  # and keep doing so
            reports = b.report()
            assert [r["answered_by"] for r in reports] == [2, 2]
            assert all("sha256" in r["follow_error"] and "still serving version 2" in r["follow_error"]
                       for r in reports)
            time.sleep(0.05)
        assert b.log().count(f"model version {v3} refused") == 2  # said once by each worker
        # the operator rolls back: b follows at once and reports no error
        trainer.swap_to_version(1, "rollback of a damaged version (test)")
        b.wait_serving(1)
        assert [r["follow_error"] for r in b.report()] == [None, None]
    finally:
        if b is not None:
            b.stop()
        a.stop()
    assert not (home_a / "models").exists() and not (home_b / "models").exists()  # no home's own registry


def test_a_control_plane_given_a_registry_refuses_a_checkpoint_dir_naming_it(tmp_path):
    from vortex.training import BackgroundTrainingCoordinator
    from vortex.training.models import mlp
    from vortex.training.registry import ModelRegistry

    config = BackgroundTrainingConfig(checkpoint_dir=str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="BackgroundTrainingConfig.checkpoint_dir="):
        BackgroundTrainingCoordinator(config, mlp(DIM, out_features=3), "vortex.training.models:mlp",
                                      tmp_path / "home", DIM, factory_kwargs={"in_features": DIM, "out_features": 3},
                                      registry=ModelRegistry(tmp_path / "registry"))


@pytest.mark.parametrize("kwargs, field", [
    ({"fleet_url": "s3://bucket/fleet", "registry_url": "/local/models"}, "registry_url"),
    ({"registry_url": "models"}, "registry_url"),
    ({"fleet_url": "s3://bucket/fleet", "registry_url": "s3://bucket/fleet/"}, "registry_url"),
    ({"fleet_url": "s3://bucket/fleet", "storage_options": "endpoint=x"}, "storage_options"),
])
def test_bad_registry_settings_name_their_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=f"ServiceSpec.{field}="):
        ServiceSpec(home=str(tmp_path), model_factory="m:f", feature_dim=2, n_classes=2, **kwargs)


def test_where_the_registry_is(tmp_path):
    def spec(**kw):
        return ServiceSpec(home=str(tmp_path), model_factory="m:f", feature_dim=2, n_classes=2, **kw)

    assert spec().shared_registry is None  # the home's own directory, its locks and appends
    assert spec(fleet_url="s3://bucket/fleet/").shared_registry == "s3://bucket/fleet/models"
    assert spec(fleet_url="s3://bucket/fleet", registry_url="s3://other/reg/").shared_registry == "s3://other/reg"
    assert spec(registry_url="s3://other/reg").shared_registry == "s3://other/reg"  # one machine, shared storage
