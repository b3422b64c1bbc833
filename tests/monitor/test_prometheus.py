"""The Prometheus exposition: what a scrape of a detector, an Orchestrator and a home's worker
processes shows, checked against what was recorded, and by promtool."""

import math
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from fleet_processes import get, post
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vortex import (
    Orchestrator,
    PerformanceTracker,
    RuntimeDetector,
    RuntimeDetectorConfig,
)
from vortex.monitor.prometheus import CONTENT_TYPE, VortexCollector, exposition
from vortex.shm import FleetReader, LogHistogram
from vortex.shm.histogram import CONFIDENCE_LE, LATENCY_LE_SECONDS
from vortex.training.models import mlp

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is missing: install Debian's prometheus package "
                             "(scripts/_venv.sh does where it runs as root)")


def parse(body: bytes) -> dict:
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def scrape(registry):
    return parse(generate_latest(registry))


def promtool_problems(body: bytes) -> str:
    out = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                         timeout=60, check=False)
    return "" if out.returncode == 0 else (out.stdout + out.stderr).decode()


# -- processes of a home ---------------------------------------------------------------------

def expected_buckets(name, values, le):
    cum = LogHistogram.of(values).cumulative(le + (math.inf,))
    return {(f"{name}_bucket", (("le", "+Inf" if b == math.inf else repr(float(b))),)): float(c)
            for b, c in zip(le + (math.inf,), cum)}


def test_fleet_exposition_is_exact_across_worker_processes_alive_and_dead(home, processes):
    workers = [processes("worker", home) for _ in range(3)]
    rng = np.random.default_rng(7)
    latencies_ms, confidences = [], []
    for i in range(90):
        work = float(rng.choice([0.2, 1.0, 3.0, 30.0]))
        conf = round(float(rng.uniform(0.05, 1.0)), 3)
        latencies_ms.append(post(workers[i % 3][1], "/infer", {"work_ms": work, "confidence": conf,
                                                              "failed": i % 10 == 4})["latency_ms"])
        confidences.append(conf)
    for i in range(7):
        post(workers[i % 3][1], "/feedback", {"label": i})

    def check(body):
        s = parse(body)
        want = {**expected_buckets("vortex_request_duration_seconds",
                                   np.array(latencies_ms) / 1e3, LATENCY_LE_SECONDS),
                **expected_buckets("vortex_request_confidence", confidences, CONFIDENCE_LE)}
        assert {k: s[k] for k in want} == want
        assert s[("vortex_request_duration_seconds_count", ())] == 90
        assert s[("vortex_request_duration_seconds_sum", ())] == pytest.approx(sum(latencies_ms) / 1e3)
        assert s[("vortex_request_confidence_sum", ())] == pytest.approx(sum(confidences))
        assert s[("vortex_requests_total", ())] == 90
        assert s[("vortex_feedback_total", ())] == 7
        assert s[("vortex_request_errors_total", ())] == 9
        return s

    s = check(exposition(home))
    assert s[("vortex_workers", (("state", "alive"),))] == 3
    # a worker killed for real: its counts stay, from its segment...
    workers[0][0].send_signal(signal.SIGKILL)
    workers[0][0].wait(timeout=30)
    s = check(exposition(home))
    assert s[("vortex_workers", (("state", "exited"),))] == 1
    # ...and once the control plane folded it (its segment removed), from the fleet state
    with FleetReader(home) as fleet:
        fleet.read_new()
        assert len(fleet.commit()) == 1
    s = check(exposition(home))
    assert s[("vortex_workers", (("state", "alive"),))] == 2
    assert s[("vortex_workers", (("state", "exited"),))] == 0
    assert s[("vortex_workers_folded_total", ())] == 1
    # the exporter process serves the same over HTTP
    _, port = processes("exporter", home)
    body, content_type = get(f"http://127.0.0.1:{port}/metrics")
    assert content_type == CONTENT_TYPE
    check(body)


def test_a_long_lived_fleet_reader_is_a_source_too(home):
    from vortex.shm import WorkerSegment

    with WorkerSegment.create(home, feature_dim=1) as seg, FleetReader(home) as fleet:
        for ms in (0.5, 5.0, 50.0):
            seg.record_sample(ms, 0.5)
        s = parse(exposition(fleet))
    assert s[("vortex_request_duration_seconds_bucket", (("le", "0.005"),))] == 2  # 5 ms is le 0.005
    assert s[("vortex_request_duration_seconds_bucket", (("le", "0.0025"),))] == 1
    assert s[("vortex_requests_total", ())] == 3


def test_detector_and_tracker_figures_in_base_units():
    det = RuntimeDetector(RuntimeDetectorConfig(latency_spike_threshold_ms=300),
                          memory_probe=lambda: 0.42)
    tracker = PerformanceTracker()
    registry = CollectorRegistry()
    registry.register(VortexCollector(det, tracker))
    first = scrape(registry)
    assert first[("vortex_detector_samples_total", ())] == 0
    assert ("vortex_detector_recent_latency_seconds", ()) not in first  # nothing to report yet
    for i, ms in enumerate([200.0] * 15 + [800.0] * 5):
        det.record_sample(ms, 0.9)
        tracker.record("fast", ms, 0.9, seq=i)
        tracker.record_outcome(i, i % 3 != 2)
    det.analyze()
    s = scrape(registry)  # read at scrape time: no re-registration needed
    assert s[("vortex_detector_samples_total", ())] == 20
    assert s[("vortex_detector_recent_latency_seconds", ())] == pytest.approx(0.5)
    assert s[("vortex_detector_baseline_latency_seconds", ())] == pytest.approx(0.2)
    assert s[("vortex_detector_memory_ratio", ())] == 0.42
    assert s[("vortex_detector_weaknesses_total", (("type", "latency_spike"),))] == 1
    assert s[("vortex_detector_weaknesses_total", (("type", "confidence_drop"),))] == 0
    assert s[("vortex_detector_triggers_total", ())] == 1
    assert s[("vortex_mode_latency_seconds_count", (("mode", "fast"),))] == 20
    assert s[("vortex_mode_latency_seconds_sum", (("mode", "fast"),))] == pytest.approx(7.0)
    assert s[("vortex_mode_latency_seconds", (("mode", "fast"), ("quantile", "0.5")))] == pytest.approx(0.2)
    assert s[("vortex_mode_confidence_sum", (("mode", "fast"),))] == pytest.approx(18.0)
    # outcomes are counters (aggregatable), not success-rate gauges
    assert s[("vortex_outcomes_total", (("position", "3"),))] == 2  # seqs 2 and 11
    assert s[("vortex_outcome_successes_total", (("position", "3"),))] == 0
    assert s[("vortex_outcome_successes_total", (("position", "1"),))] == 3  # seqs 0, 9, 18


def test_detector_only_and_namespace():
    det = RuntimeDetector(memory_probe=lambda: 0.1)
    registry = CollectorRegistry()
    registry.register(VortexCollector(det, namespace="svc"))
    s = scrape(registry)
    assert s[("svc_detector_running", ())] == 0.0
    assert not any(name.startswith(("svc_mode", "vortex_")) for name, _ in s)


def make_orchestrator(home):
    kw = {"in_features": 4, "hidden": 8, "out_features": 3, "seed": 0}
    return Orchestrator(mlp(**kw), "vortex.training.models:mlp", home, feature_dim=4,
                        factory_kwargs=kw).with_runtime_detector()


def test_single_process_orchestrator(home):
    with make_orchestrator(home).with_background_trainer() as orch:
        preds = [orch.infer(np.full(4, i, np.float32)) for i in range(12)]
        for p in preds[:5]:
            orch.feedback(p.request_id, p.output)
        body = exposition(orch)
        s = parse(body)
        if PROMTOOL is not None:
            assert promtool_problems(body) == ""
    assert s[("vortex_detector_samples_total", ())] == 12
    assert s[("vortex_mode_latency_seconds_count", (("mode", "fast"),))] == 12
    assert s[("vortex_mode_latency_seconds_sum", (("mode", "fast"),))] == pytest.approx(
        sum(p.latency_ms for p in preds) / 1e3)
    assert sum(v for (name, _), v in s.items() if name == "vortex_outcomes_total") == 5
    assert s[("vortex_training_runs_total", (("outcome", "started"),))] == 0
    assert s[("vortex_model_swaps_total", ())] == 0
    assert s[("vortex_training_buffer_samples", ())] == 5  # the feedback, buffered
    # no worker records under this home: no fleet figures pretending to be empty
    assert ("vortex_requests_total", ()) not in s


def test_an_orchestrator_whose_home_has_workers_exports_the_fleet(home):
    from vortex.shm import WorkerSegment

    with WorkerSegment.create(home, feature_dim=4) as seg, make_orchestrator(home) as orch:
        seg.record_sample(2.0, 0.7)
        orch.infer(np.zeros(4, np.float32))
        s = parse(exposition(orch))
    assert s[("vortex_requests_total", ())] == 1
    assert s[("vortex_request_duration_seconds_bucket", (("le", "0.0025"),))] == 1
    assert s[("vortex_mode_latency_seconds_count", (("mode", "fast"),))] == 1


@pytest.mark.parametrize("bad", [None, 3, object(), [1, 2]])
def test_a_source_of_another_kind_is_refused(bad):
    with pytest.raises(ValueError, match="source="):
        exposition(bad)


@needs_promtool
def test_promtool_finds_nothing_to_report(home):
    from vortex.shm import WorkerSegment

    det = RuntimeDetector(memory_probe=lambda: 0.3)
    tracker = PerformanceTracker()
    with WorkerSegment.create(home, feature_dim=4) as seg, make_orchestrator(home) as orch:
        for i in range(30):
            seg.record_sample(0.1 * i, i / 30)
            det.record_sample(5.0 + i, 0.9, 0.1)
            tracker.record("fast", 5.0, 0.8, seq=i)
            tracker.record_outcome(i, True)
            orch.feedback(orch.infer(np.zeros(4, np.float32)).request_id, 1)
        seg.push(np.zeros(4, np.float32), 1)
        det.analyze()
        registry = CollectorRegistry()
        registry.register(VortexCollector(det, tracker))
        bodies = {"home": exposition(home), "orchestrator": exposition(orch),
                  "detector+tracker": generate_latest(registry)}
    for kind, body in bodies.items():
        assert promtool_problems(body) == "", kind
        assert b"_ms" not in body, kind


CHURN = r"""
import sys
from vortex.shm import FleetReader, WorkerSegment
home, n = sys.argv[1], int(sys.argv[2])
fleet = FleetReader(home)
for i in range(n):  # a worker comes, records 10 requests, exits; the control plane folds it
    seg = WorkerSegment.create(home, feature_dim=1)
    for _ in range(10):
        seg.record_sample(1.0, 0.5)
    seg.close()
    fleet.read_new()
    fleet.commit()
"""


def test_counters_never_go_down_while_the_control_plane_folds_workers(home):
    """Scrapes race a control plane (another process) that folds a worker every few ms: the
    fold saves the state, then removes the segment, and a scrape must not see neither."""
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(home), "400"])
    seen = [0.0]
    try:
        while churn.poll() is None:
            s = parse(exposition(home))
            seen.append(s.get(("vortex_requests_total", ()), 0.0))
            assert seen[-1] >= seen[-2], f"counter went down: {seen[-2]} -> {seen[-1]}"
            # the histogram may already count the one record the writer is in the middle of
            # (docs/SHM.md: between the published and the begun records), never fewer
            count = s.get(("vortex_request_duration_seconds_count", ()), 0.0)
            assert seen[-1] <= count <= seen[-1] + 1, (count, seen[-1])
    finally:
        churn.kill() if churn.poll() is None else None
        churn.wait()
    assert churn.returncode == 0
    assert parse(exposition(home))[("vortex_requests_total", ())] == 4000
    assert len(seen) > 20  # the scrapes did race the folds
