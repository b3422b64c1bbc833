"""The header's request figures read from the serving workers' shared-memory segments, written
by a real worker process, without disturbing the control plane's cursors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vortex.dashboard.state import HomeView
from vortex.shm.location import STATE_NAME, segment_dir

N = 400
WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from vortex.shm import WorkerSegment

    rng = np.random.default_rng(7)
    seg = WorkerSegment.create(sys.argv[1], feature_dim=4)
    for i in range({n}):
        latency, confidence = float(rng.uniform(0.5, 40.0)), float(rng.uniform(0.2, 1.0))
        error = float(rng.uniform(0.0, 1.0)) if i % 4 else float("nan")  # 3 in 4 labelled
        seg.record_sample(latency, confidence, error)
        print(latency, confidence, error)
    print("ready", flush=True)
    sys.stdin.read()  # stay alive until the test closes stdin
""").format(n=N)


def test_header_figures_come_from_a_live_workers_segment(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    try:
        _check(home)
    finally:  # the segment stays (in /dev/shm) after its worker: remove it
        shutil.rmtree(segment_dir(home), ignore_errors=True)


def _check(home) -> None:
    view = HomeView(home)
    assert view.snapshot()["fleet"] is None  # no worker yet: nothing is created
    assert not segment_dir(home).exists()
    with subprocess.Popen([sys.executable, "-c", WORKER, str(home)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as worker:
        rows = []
        for line in worker.stdout:
            if line.startswith("ready"):
                break
            rows.append([float(x) for x in line.split()])
        written = np.array(rows)
        s = view.snapshot()
        h, fleet = s["header"], s["fleet"]
        assert h["source"] == "shared memory (last minute)"
        assert [w["alive"] for w in fleet["workers"]] == [True] and fleet["total_inferences"] == N
        assert h["control_plane"] == "1 serving worker(s) alive"
        assert h["p50_latency_ms"] == pytest.approx(np.percentile(written[:, 0], 50))
        assert h["p99_latency_ms"] == pytest.approx(np.percentile(written[:, 0], 99))
        assert h["mean_confidence"] == pytest.approx(written[:, 1].mean())
        labelled = written[~np.isnan(written[:, 2]), 2]
        assert h["label_coverage"] == pytest.approx(len(labelled) / N)
        assert h["error_rate"] == pytest.approx(labelled.mean())
        assert h["accuracy"] == pytest.approx((labelled < 0.5).mean())
        assert h["requests_per_sec"] > 0
        assert s["metrics"]["inference"]["total_inferences"] == N
        worker.stdin.close()
        assert worker.wait(timeout=30) == 0
    # a reader only: the control plane's saved cursors were never written
    assert not (segment_dir(home) / STATE_NAME).exists()
    after = view.snapshot()
    assert after["fleet"]["workers"][0]["alive"] is False
    assert after["header"]["control_plane"] != "1 serving worker(s) alive"


def _attach(orch):
    from vortex import BackgroundTrainingConfig, RuntimeDetectorConfig

    orch.with_runtime_detector(RuntimeDetectorConfig(window_size=100))
    orch.with_background_trainer(BackgroundTrainingConfig(enabled=False, min_samples_for_training=10))


def test_a_served_homes_control_plane_status_gives_the_in_memory_figures(tmp_path):
    from vortex.serving import ControlPlane, ServiceSpec, ServingWorker

    home = tmp_path / "served"
    spec = ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=4,
                       n_classes=3, factory_kwargs={"in_features": 4, "out_features": 3}, configure=_attach)
    plane = ControlPlane(spec)  # not started: the test drives its pump and publication
    worker = ServingWorker(spec)
    worker.start()
    try:
        rng = np.random.default_rng(0)
        answers = [worker.infer(rng.random(4).astype(np.float32)) for _ in range(12)]
        for i, a in enumerate(answers[:5]):
            worker.feedback(a.request_id, i % 3)
        plane.pump()
        plane.publish()
        s = HomeView(home).snapshot()
        assert s["problems"] == []
        tracker = plane.orchestrator.tracker.summary()
        inference = s["metrics"]["inference"]
        assert inference["total_inferences"] == tracker["total_inferences"] == 12
        assert {m: f["count"] for m, f in inference["modes"].items()} == \
            {m: f["count"] for m, f in tracker["modes"].items()}
        assert s["metrics"]["detection"]["samples_collected"] == 12
        assert s["header"]["control_plane"].startswith(f"process {os.getpid()} running")
        assert s["header"]["label_coverage"] == pytest.approx(5 / 12)  # the worker's segment
    finally:
        worker.stop()
        plane.stop()
        shutil.rmtree(segment_dir(home), ignore_errors=True)
