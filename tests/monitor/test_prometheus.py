from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vortex import PerformanceTracker, RuntimeDetector, RuntimeDetectorConfig
from vortex.monitor.prometheus import VortexCollector


def scrape(registry):
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_scrape_reads_current_figures():
    det = RuntimeDetector(RuntimeDetectorConfig(latency_spike_threshold_ms=300),
                          memory_probe=lambda: 0.42)
    tracker = PerformanceTracker()
    registry = CollectorRegistry()
    registry.register(VortexCollector(det, tracker))
    first = scrape(registry)
    assert first[("vortex_detector_samples_total", ())] == 0
    assert ("vortex_detector_recent_latency_ms", ()) not in first  # nothing to report yet
    for i, ms in enumerate([200.0] * 15 + [800.0] * 5):
        det.record_sample(ms, 0.9)
        tracker.record("fast", ms, 0.9, seq=i)
        tracker.record_outcome(i, i % 3 != 2)
    det.analyze()
    s = scrape(registry)  # read at scrape time: no re-registration needed
    assert s[("vortex_detector_samples_total", ())] == 20
    assert s[("vortex_detector_recent_latency_ms", ())] == 500.0
    assert s[("vortex_detector_baseline_latency_ms", ())] == 200.0
    assert s[("vortex_detector_memory_fraction", ())] == 0.42
    assert s[("vortex_detector_weaknesses_total", (("type", "latency_spike"),))] == 1
    assert s[("vortex_detector_weaknesses_total", (("type", "confidence_drop"),))] == 0
    assert s[("vortex_detector_triggers_total", ())] == 1
    assert s[("vortex_inferences_total", (("mode", "fast"),))] == 20
    assert s[("vortex_inference_latency_ms", (("mode", "fast"), ("stat", "mean")))] == 350.0
    assert s[("vortex_inference_latency_ms", (("mode", "fast"), ("stat", "p50")))] == 200.0
    assert s[("vortex_position_success_rate", (("position", "3"),))] == 0.0
    assert s[("vortex_position_success_rate", (("position", "1"),))] == 1.0
    assert s[("vortex_sacred_success_rate", ())] == 0.0


def test_detector_only():
    det = RuntimeDetector(memory_probe=lambda: 0.1)
    registry = CollectorRegistry()
    registry.register(VortexCollector(det, namespace="svc"))
    s = scrape(registry)
    assert s[("svc_detector_running", ())] == 0.0
    assert not any(name.startswith("svc_inference") for name, _ in s)
