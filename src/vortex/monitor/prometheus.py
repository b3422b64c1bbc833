"""Prometheus exposition of the detector's and tracker's figures.

:class:`VortexCollector` implements prometheus_client's custom-collector interface: the
figures are read from the detector and tracker when Prometheus scrapes, so nothing is added
to the request path.

>>> from prometheus_client import REGISTRY, start_http_server
>>> REGISTRY.register(VortexCollector(detector, tracker))     # doctest: +SKIP
>>> start_http_server(9100)                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .detector import RuntimeDetector
    from .tracker import PerformanceTracker

__all__ = ["VortexCollector"]


class VortexCollector(Collector):
    """Exposes a :class:`RuntimeDetector` (and optionally a :class:`PerformanceTracker`).

    Parameters
    ----------
    detector
        The detector whose :meth:`~RuntimeDetector.stats` are exported.
    tracker
        A tracker whose :meth:`~PerformanceTracker.summary` is exported too.
    namespace
        Prefix of every metric name.
    """

    def __init__(self, detector: RuntimeDetector, tracker: PerformanceTracker | None = None,
                 namespace: str = "vortex") -> None:
        self.detector = detector
        self.tracker = tracker
        self.namespace = namespace

    def collect(self) -> Iterator[Metric]:
        ns = self.namespace
        s = self.detector.stats()
        yield CounterMetricFamily(f"{ns}_detector_samples", "Samples recorded by the detector",
                                  value=s.total_samples)
        yield GaugeMetricFamily(f"{ns}_detector_window_samples", "Samples in the metric window",
                                value=s.samples_in_window)
        yield GaugeMetricFamily(f"{ns}_detector_window_fill",
                                "Fraction of the metric window filled", value=s.window_fill)
        for name, doc, value in (
                ("recent_latency_ms", "Mean latency of the newest 10 requests",
                 s.recent_latency_ms),
                ("baseline_latency_ms", "Mean latency of the window's older half",
                 s.baseline_latency_ms),
                ("recent_confidence", "Mean confidence of the newest 10 requests",
                 s.recent_confidence),
                ("baseline_confidence", "Mean confidence of the window's older half",
                 s.baseline_confidence),
                ("recent_prediction_error", "Mean error of recent requests with ground truth",
                 s.recent_prediction_error),
                ("memory_fraction", "Resident memory over the process's limit",
                 s.memory_fraction),
                ("throughput_rps", "Request rate of the last monitor tick", s.throughput_rps)):
            if value is not None:
                yield GaugeMetricFamily(f"{ns}_detector_{name}", doc, value=value)
        weaknesses = CounterMetricFamily(f"{ns}_detector_weaknesses",
                                         "Weaknesses detected, by type", labels=["type"])
        for kind, count in sorted(s.weaknesses_detected.items()):
            weaknesses.add_metric([kind], count)
        yield weaknesses
        yield CounterMetricFamily(f"{ns}_detector_triggers", "RSI trigger events emitted",
                                  value=s.triggers_emitted)
        yield GaugeMetricFamily(f"{ns}_detector_running", "1 if the monitor thread is running",
                                value=float(s.is_running))
        if self.tracker is not None:
            yield from self._tracker_metrics(ns, self.tracker)

    @staticmethod
    def _tracker_metrics(ns: str, tracker: PerformanceTracker) -> Iterator[Metric]:
        summary = tracker.summary()
        count = CounterMetricFamily(f"{ns}_inferences", "Inferences recorded, by mode",
                                    labels=["mode"])
        latency = GaugeMetricFamily(f"{ns}_inference_latency_ms",
                                    "Inference latency (mean over all time, quantiles over the "
                                    "newest requests), by mode", labels=["mode", "stat"])
        confidence = GaugeMetricFamily(f"{ns}_inference_confidence_mean",
                                       "Mean confidence, by mode", labels=["mode"])
        for mode, m in summary["modes"].items():
            count.add_metric([mode], m["count"])
            for stat in ("mean", "p50", "p95", "p99"):
                value = m[f"{stat}_latency_ms"]
                if value is not None:
                    latency.add_metric([mode, stat], value)
            if m["mean_confidence"] is not None:
                confidence.add_metric([mode], m["mean_confidence"])
        yield count
        yield latency
        yield confidence
        success = GaugeMetricFamily(f"{ns}_position_success_rate",
                                    "Success rate of outcomes by flux position",
                                    labels=["position"])
        for p, figures in summary["positions"].items():
            if figures["success_rate"] is not None:
                success.add_metric([str(p)], figures["success_rate"])
        yield success
        if summary["sacred_success_rate"] is not None:
            yield GaugeMetricFamily(f"{ns}_sacred_success_rate",
                                    "Success rate at the sacred positions 3, 6, 9",
                                    value=summary["sacred_success_rate"])
