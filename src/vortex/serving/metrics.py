"""``GET /vortex/metrics``: the Prometheus exposition of every worker of a home.

Any worker answers the scrape with the fleet's figures, read from the shared-memory segments
(a :class:`vortex.shm.FleetReader` that never commits): request counts and the latency and
confidence histograms summed over every worker, alive or gone, as classic histograms whose
buckets are exact prefix sums of the segments' log buckets (so ``histogram_quantile`` can
aggregate them across replicas). :func:`fleet_exposition` is the one function the route
calls; the full exposition (detector and RSI figures) belongs to
:mod:`vortex.monitor.prometheus`, which may replace it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

__all__ = ["fleet_exposition", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, hist: Any, le: tuple[float, ...]) -> Any:
    from prometheus_client.core import HistogramMetricFamily

    cumulative = hist.cumulative(le)
    buckets = [(repr(float(b)), int(c)) for b, c in zip(le, cumulative)] + [("+Inf", hist.count)]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.total)


class _FleetCollector:
    def __init__(self, totals: Any, workers: int) -> None:
        self.totals, self.workers = totals, workers

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from ..shm.histogram import CONFIDENCE_LE, LATENCY_LE_SECONDS

        t = self.totals
        yield _histogram("vortex_request_duration_seconds", "Served requests' latency, every worker",
                         t.latency, LATENCY_LE_SECONDS)
        yield _histogram("vortex_request_confidence", "Served requests' confidence, every worker",
                         t.confidence, CONFIDENCE_LE)
        yield CounterMetricFamily("vortex_feedback", "Labelled samples recorded (feedback)",
                                  value=t.samples)
        yield GaugeMetricFamily("vortex_workers", "Serving workers alive", value=self.workers)


def fleet_exposition(home: str | os.PathLike[str]) -> bytes:
    """The Prometheus text exposition of ``home``'s fleet."""
    from prometheus_client import CollectorRegistry, generate_latest

    from ..shm import FleetReader

    with FleetReader(home) as fleet:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_FleetCollector(fleet.totals(), sum(w.alive for w in fleet.workers())))
        return generate_latest(registry)
