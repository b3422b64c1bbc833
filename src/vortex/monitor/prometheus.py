"""Prometheus exposition of Vortex's figures, in base units and aggregatable across processes.

One call serves ``GET /metrics``::

    body = exposition(source)          # bytes, Prometheus text format 0.0.4
    headers = {"Content-Type": CONTENT_TYPE}

``source`` is what the process can see:

* a home (path) or a :class:`vortex.shm.FleetReader`: every serving worker of the home, from
  their shared-memory segments. Latency (seconds) and confidence are classic histograms, exact
  prefix sums of the workers' merged log-bucket histograms; requests, errors and feedback are
  counters summed over the workers, alive or dead (a dead worker's counts stay, folded into
  the fleet state), so ``histogram_quantile(0.99, sum by (le)
  (rate(vortex_request_duration_seconds_bucket[1m])))`` is the p99 of every worker of every
  replica, and ``sum(rate(vortex_requests_total[1m]))`` their request rate.
* an :class:`vortex.Orchestrator` (one process, both roles): the above for its home when
  workers record there, plus its detector, its per-mode figures (Prometheus summaries: the
  quantiles of the process's recent window, which cannot be aggregated across processes, with
  exact all-time ``_count`` and ``_sum``), outcome counters and training counters.
* a :class:`vortex.RuntimeDetector`: the detector's counters and gauges.

:class:`VortexCollector` is the same as a prometheus_client custom collector, read at scrape
time (nothing is added to the request path):

>>> from prometheus_client import REGISTRY, start_http_server
>>> REGISTRY.register(VortexCollector(orchestrator))           # doctest: +SKIP
>>> start_http_server(9100)                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Union

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ..errors import VortexError

if TYPE_CHECKING:
    from ..shm import FleetReader, LogHistogram

__all__ = ["CONTENT_TYPE", "VortexCollector", "exposition"]

CONTENT_TYPE: str = CONTENT_TYPE_LATEST
"""The ``Content-Type`` of :func:`exposition`'s body (text format 0.0.4)."""

Source = Union[str, "os.PathLike[str]", Any]

_SNAPSHOT_ATTEMPTS = 5
_MODE_QUANTILES = (0.5, 0.95, 0.99)
_RUN_OUTCOMES = ("started", "completed", "failed", "cancelled", "skipped")


def exposition(source: Source, *, namespace: str = "vortex") -> bytes:
    """The Prometheus text exposition of ``source`` (see the module docstring), as bytes to
    serve with :data:`CONTENT_TYPE`.

    Raises
    ------
    ValueError
        ``source`` is none of the kinds above, naming it.
    vortex.errors.CorruptFileError
        The home's fleet state (``fleet-state.json``) is damaged (a damaged worker segment is
        skipped instead, and counted in ``vortex_segments_damaged``).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VortexCollector(source, namespace=namespace))
    return generate_latest(registry)


class VortexCollector(Collector):
    """Exposes a home's workers, an Orchestrator or a RuntimeDetector (see the module
    docstring), read when Prometheus scrapes.

    Parameters
    ----------
    source
        A home (path), a :class:`vortex.shm.FleetReader`, an :class:`vortex.Orchestrator` or a
        :class:`vortex.RuntimeDetector`.
    tracker
        A :class:`vortex.PerformanceTracker` to export too (an Orchestrator's own is exported
        without it).
    namespace
        Prefix of every metric name.
    """

    def __init__(self, source: Source, tracker: Any = None, namespace: str = "vortex") -> None:
        _kind(source)  # refuse a wrong source now rather than at the first scrape
        self.source = source
        self.tracker = tracker
        self.namespace = namespace

    def collect(self) -> Iterator[Metric]:
        """The source's metric families now (prometheus_client's ``Collector`` contract),
        then the tracker's when one was given.

        A home is read through a fresh :func:`fleet_snapshot` on every scrape, so a worker
        started or folded since the last scrape is counted; a :class:`vortex.shm.FleetReader`
        is read as it is.

        Raises
        ------
        vortex.errors.CorruptFileError
            The home's fleet state is damaged (see :func:`exposition`).
        vortex.errors.VortexError
            The home's fleet state kept changing while it was read (more than one control
            plane folding the home's workers).
        """
        ns, source = self.namespace, self.source
        kind = _kind(source)
        if kind == "fleet":
            yield from fleet_metrics(ns, source)
        elif kind == "home":
            with fleet_snapshot(source) as fleet:
                yield from fleet_metrics(ns, fleet)
        elif kind == "orchestrator":
            yield from _orchestrator_metrics(ns, source)
        else:
            yield from detector_metrics(ns, source)
        if self.tracker is not None:
            yield from tracker_metrics(ns, self.tracker)


def _kind(source: Any) -> str:
    from ..shm import FleetReader

    if isinstance(source, FleetReader):
        return "fleet"
    if isinstance(source, (str, os.PathLike)):
        return "home"
    if hasattr(source, "tracker") and hasattr(source, "system_status"):
        return "orchestrator"
    if hasattr(source, "stats") and hasattr(source, "record_sample"):
        return "detector"
    raise ValueError(f"source={source!r} is not a home, a FleetReader, an Orchestrator or a "
                     "RuntimeDetector")


# -- the fleet: every worker of a home -----------------------------------------------------

@contextmanager
def fleet_snapshot(home: str | os.PathLike[str]) -> Iterator[FleetReader]:
    """A read-only :class:`vortex.shm.FleetReader` of ``home`` whose folded totals and open
    segments belong to one moment.

    The control plane folds a dead worker by saving the fleet state (with the worker's totals)
    and then removing its segment. A reader that loaded the state before that save and listed
    the segments after the removal would miss the worker, and Prometheus would take the drop for
    a counter reset; so the state file must be the same file before and after the listing (each
    save replaces it). The reader is closed on exit and never commits.
    """
    from ..shm import FleetReader, segment_dir
    from ..shm.location import STATE_NAME

    state = segment_dir(home) / STATE_NAME
    for _ in range(_SNAPSHOT_ATTEMPTS):
        before = _identity(state)
        fleet = FleetReader(home)
        if _identity(state) == before:
            break
        fleet.close()
    else:
        raise VortexError(f"the fleet state {state} changed during each of {_SNAPSHOT_ATTEMPTS} "
                          "reads: is more than one control plane folding this home's workers?")
    try:
        yield fleet
    finally:
        fleet.close()


def _identity(path: Any) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def fleet_metrics(ns: str, fleet: FleetReader) -> Iterator[Metric]:
    """Histograms and counters over every worker ``fleet`` sees, present and folded."""
    from ..shm.histogram import CONFIDENCE_LE, LATENCY_LE_SECONDS

    totals = fleet.totals()
    workers = fleet.workers()
    yield _histogram(f"{ns}_request_duration_seconds",
                     "Request latency recorded by every serving worker", totals.latency,
                     LATENCY_LE_SECONDS)
    yield _histogram(f"{ns}_request_confidence",
                     "Confidence of the predictions of every serving worker", totals.confidence,
                     CONFIDENCE_LE)
    yield CounterMetricFamily(f"{ns}_requests", "Requests recorded by every serving worker",
                              value=totals.records)
    yield CounterMetricFamily(f"{ns}_request_errors",
                              "Requests that failed (the ASGI middleware: a 5xx response); "
                              "prediction errors are not counted here", value=totals.failed)
    yield CounterMetricFamily(f"{ns}_feedback",
                              "Labelled samples (feedback) recorded by every serving worker",
                              value=totals.samples)
    alive = sum(w.alive for w in workers)
    state = GaugeMetricFamily(f"{ns}_workers", "Serving workers with a segment, by state",
                              labels=["state"])
    state.add_metric(["alive"], alive)
    state.add_metric(["exited"], len(workers) - alive)
    yield state
    yield CounterMetricFamily(f"{ns}_workers_folded",
                              "Exited workers whose counts were folded into the fleet state",
                              value=fleet.retired_workers)
    yield GaugeMetricFamily(f"{ns}_segments_damaged",
                            "Worker segments skipped because they are damaged",
                            value=len(fleet.problems))


def _histogram(name: str, doc: str, hist: LogHistogram, le: tuple[float, ...]) -> Metric:
    cumulative = hist.cumulative((*le, math.inf))
    buckets = [(_le(b), int(c)) for b, c in zip((*le, math.inf), cumulative, strict=True)]
    # _count is the +Inf bucket by definition; _sum is the workers' running total
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.total)


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


# -- one process: detector, tracker, orchestrator --------------------------------------------

def detector_metrics(ns: str, detector: Any) -> Iterator[Metric]:
    """A :class:`vortex.RuntimeDetector`'s counters and the gauges of its current window."""
    s = detector.stats()
    yield CounterMetricFamily(f"{ns}_detector_samples", "Samples recorded by the detector",
                              value=s.total_samples)
    yield GaugeMetricFamily(f"{ns}_detector_window_samples", "Samples in the metric window",
                            value=s.samples_in_window)
    yield GaugeMetricFamily(f"{ns}_detector_window_fill_ratio",
                            "Fraction of the metric window filled", value=s.window_fill)
    for name, doc, value, scale in (
            ("recent_latency_seconds", "Mean latency of the newest 10 requests",
             s.recent_latency_ms, 1e-3),
            ("baseline_latency_seconds", "Mean latency of the window's older half",
             s.baseline_latency_ms, 1e-3),
            ("recent_confidence", "Mean confidence of the newest 10 requests",
             s.recent_confidence, 1.0),
            ("baseline_confidence", "Mean confidence of the window's older half",
             s.baseline_confidence, 1.0),
            ("recent_prediction_error", "Mean error of recent requests with ground truth",
             s.recent_prediction_error, 1.0),
            ("memory_ratio", "Resident memory over the process's limit", s.memory_fraction, 1.0),
            ("throughput_requests_per_second", "Request rate of the last monitor tick",
             s.throughput_rps, 1.0)):
        if value is not None:
            yield GaugeMetricFamily(f"{ns}_detector_{name}", doc, value=value * scale)
    weaknesses = CounterMetricFamily(f"{ns}_detector_weaknesses", "Weaknesses detected, by type",
                                     labels=["type"])
    for kind, count in sorted(s.weaknesses_detected.items()):
        weaknesses.add_metric([kind], count)
    yield weaknesses
    yield CounterMetricFamily(f"{ns}_detector_triggers", "RSI trigger events emitted",
                              value=s.triggers_emitted)
    yield CounterMetricFamily(f"{ns}_detector_analyses", "Analysis passes run", value=s.analyses)
    yield GaugeMetricFamily(f"{ns}_detector_running", "1 if the monitor thread is running",
                            value=float(s.is_running))


def tracker_metrics(ns: str, tracker: Any) -> Iterator[Metric]:
    """A :class:`vortex.PerformanceTracker`'s figures of this process.

    Latency and confidence per mode are summaries: exact all-time ``_count`` and ``_sum``, and
    latency quantiles over the tracker's window of this process (quantiles cannot be merged
    across processes; the fleet histograms can).
    """
    summary = tracker.summary()
    latency = SummaryMetricFamily(f"{ns}_mode_latency_seconds",
                                  "Inference latency of this process, by serving mode "
                                  "(quantiles over its newest requests)", labels=["mode"])
    confidence = SummaryMetricFamily(f"{ns}_mode_confidence",
                                     "Confidence of this process's predictions, by serving mode",
                                     labels=["mode"])
    for mode, m in summary["modes"].items():
        count = m["count"]
        mean_ms = m["mean_latency_ms"] or 0.0
        latency.add_metric([mode], count_value=count, sum_value=mean_ms * count * 1e-3)
        confidence.add_metric([mode], count_value=count,
                              sum_value=(m["mean_confidence"] or 0.0) * count)
        for q in _MODE_QUANTILES:
            value = m[f"p{round(q * 100)}_latency_ms"]
            if value is not None:  # SummaryMetricFamily.add_metric takes no quantiles
                latency.samples.append(Sample(f"{ns}_mode_latency_seconds",
                                              {"mode": mode, "quantile": repr(q)}, value * 1e-3))
    yield latency
    yield confidence
    outcomes = CounterMetricFamily(f"{ns}_outcomes", "Outcomes recorded, by flux position",
                                   labels=["position"])
    successes = CounterMetricFamily(f"{ns}_outcome_successes",
                                    "Outcomes that were correct, by flux position",
                                    labels=["position"])
    for p, figures in summary["positions"].items():
        outcomes.add_metric([str(p)], figures["outcomes"])
        successes.add_metric([str(p)], figures["successes"])
    yield outcomes
    yield successes


def _orchestrator_metrics(ns: str, orch: Any) -> Iterator[Metric]:
    from ..shm import segment_dir

    if any(segment_dir(orch.home).glob("*")):  # workers record under this home
        with fleet_snapshot(orch.home) as fleet:
            yield from fleet_metrics(ns, fleet)
    if orch.detector is not None:
        yield from detector_metrics(ns, orch.detector)
    yield from tracker_metrics(ns, orch.tracker)
    version = orch.current_model_version()
    if version is not None:
        yield GaugeMetricFamily(f"{ns}_model_version", "Registry version of the model serving",
                                value=version)
    if orch.trainer is not None:
        yield from training_metrics(ns, orch.trainer.stats())


def training_metrics(ns: str, stats: Any) -> Iterator[Metric]:
    """A :class:`vortex.training.TrainingStats`' counters."""
    runs = CounterMetricFamily(f"{ns}_training_runs", "Training runs, by outcome",
                               labels=["outcome"])
    for outcome in _RUN_OUTCOMES:
        runs.add_metric([outcome], getattr(stats, f"runs_{outcome}"))
    yield runs
    yield CounterMetricFamily(f"{ns}_training_samples", "Samples trained on",
                              value=stats.samples_trained)
    yield CounterMetricFamily(f"{ns}_model_swaps", "Model versions swapped in", value=stats.swaps)
    yield CounterMetricFamily(f"{ns}_model_rollbacks", "Swaps rolled back", value=stats.rollbacks)
    yield GaugeMetricFamily(f"{ns}_training_buffer_samples", "Samples buffered for training",
                            value=stats.buffer_size)
