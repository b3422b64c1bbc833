"""Crash tests for real: kill -9 a training worker in the middle of training."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import numpy as np
import pytest

from vortex.config import BackgroundTrainingConfig
from vortex.training import BackgroundTrainingCoordinator
from vortex.training.models import mlp

KW = {"in_features": 64, "hidden": 32, "out_features": 10, "seed": 0}


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _worker_log(c):
    runs = os.path.join(c.home, "runs")
    for d in os.listdir(runs) if os.path.isdir(runs) else ():
        path = os.path.join(runs, d, "worker-0.log")
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
    return ""


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_kill9_worker_mid_training(tmp_path, monkeypatch, world_size):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    monkeypatch.setenv("VORTEX_WORKER_LOG", "INFO")  # the worker logs each epoch
    cfg = BackgroundTrainingConfig(min_samples_for_training=200, num_epochs=400, batch_size=32,
                                   world_size=world_size)
    c = BackgroundTrainingCoordinator(cfg, mlp(**KW), "vortex.training.models:mlp", tmp_path, 64,
                                      factory_kwargs=KW)
    c.add_samples(x[:900], y[:900])
    versions, log_before = c.get_model_versions(), c.registry.serving_log()
    result = {}
    t = threading.Thread(target=lambda: result.update(run=c.run_once("manual")))
    t.start()
    _wait_for(lambda: "epoch 2/400" in _worker_log(c))  # mid-training, not at start-up
    victim = c.worker_pids()[-1]
    os.kill(victim, signal.SIGKILL)
    t.join(60)
    run = result["run"]
    assert run.status == "failed" and "killed by signal 9" in run.error, run.error
    assert c.stats().runs_failed == 1 and c.stats().last_error == run.error
    # registry, serving log and served model unchanged; every version still verifies
    assert c.get_model_versions() == versions and c.registry.serving_log() == log_before
    assert c.current_model_version() == 1
    for row in versions:
        c.registry.verify(row["version"])
    # no worker left behind (the surviving rank was killed with its process group)
    for pid in c.worker_pids():
        pytest.fail(f"worker {pid} still listed")
    # the next trigger works
    c.config = dataclasses.replace(c.config, num_epochs=3)
    run = c.run_once("manual")
    assert run.status == "swapped", run.error
    assert c.current_model_version() == 2
