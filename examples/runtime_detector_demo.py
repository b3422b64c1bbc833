"""Vortex runtime detector demo: an inference service's traffic, and the weaknesses found in it.

A simulated image-classification service serves requests in two modes ("fast", "thorough").
Four minutes of its life are replayed on a virtual clock (one monitor tick = one virtual
second, so the run takes seconds): steady traffic, a cron job that stalls requests every 30 s,
an input drift that first lowers the model's confidence and then its accuracy, an upstream
outage that cuts the request rate, and a memory-hungry cache warm-up, for which the demo really
allocates memory: the detector measures the process's own resident memory.

Every request goes through ``RuntimeDetector.record_sample`` and
``PerformanceTracker.record``; the detector's monitor tick analyses the window, and
``RSITriggerEvent`` s reach a subscriber (here: printed) subject to the trigger cooldown.

It ends with a checklist: each scenario's weakness detected (first tick, severity) and the RSI
trigger delivered; the exit status is 1 unless all were.

Run: ``python examples/runtime_detector_demo.py`` (``--quick`` for a lighter run).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from vortex import PerformanceTracker, RuntimeDetector, RuntimeDetectorConfig, degraded
from vortex.demo.checklist import Checklist
from vortex.monitor import RSITriggerEvent, WeaknessType
from vortex.monitor.memory import ProcessMemoryProbe
from vortex.monitor.prometheus import VortexCollector

DURATION = 240  # virtual seconds
CRON_STARTS = (40, 70, 100, 130)  # a job that stalls requests for 4 s every 30 s
DRIFT = (150, 165, 180)  # confidence drops at 150, accuracy collapses at 165, fixed at 180
OUTAGE = (195, 205)  # upstream outage: a quarter of the usual traffic
CACHE_WARMUP = (215, 225)  # a cache that holds real memory


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def phase_at(t: int) -> dict:
    """How the service behaves at virtual second ``t``."""
    p = {"stall": 0.0, "conf": (18.0, 2.0), "error": 0.05, "rate_factor": 1.0, "label": "steady"}
    if any(s <= t < s + 4 for s in CRON_STARTS):
        p.update(stall=0.6, label="cron job")
    if DRIFT[0] <= t < DRIFT[1]:
        p.update(conf=(7.0, 3.0), error=0.2, label="input drift")
    elif DRIFT[1] <= t < DRIFT[2]:
        p.update(conf=(5.0, 5.0), error=0.7, label="input drift (worse)")
    if OUTAGE[0] <= t < OUTAGE[1]:
        p.update(rate_factor=0.25, label="upstream outage")
    if CACHE_WARMUP[0] <= t < CACHE_WARMUP[1]:
        p["label"] = "cache warm-up"
    return p


def serve_one_second(t: int, rate: int, rng: np.random.Generator, detector: RuntimeDetector,
                     tracker: PerformanceTracker, seq: int) -> int:
    """Serve (simulate) one second of requests; returns the next sequence number."""
    p = phase_at(t)
    n = int(rate * p["rate_factor"] * rng.uniform(0.95, 1.05))
    for _ in range(n):
        mode = "thorough" if rng.random() < 0.2 else "fast"
        latency = rng.lognormal(np.log(35.0 if mode == "fast" else 120.0), 0.25)
        if rng.random() < p["stall"]:
            latency += rng.uniform(600.0, 1000.0)
        confidence = rng.beta(*p["conf"])
        labelled = rng.random() < 0.3  # ground truth arrives for 30% of the requests
        correct = rng.random() > p["error"]
        error = (0.0 if correct else 1.0) if labelled else float("nan")
        detector.record_sample(latency, confidence, error)
        tracker.record(mode, latency, confidence, seq=seq)
        if labelled:
            tracker.record_outcome(seq, correct)
        seq += 1
    return seq


# the scenario each weakness kind is expected from
EXPECTED = ((WeaknessType.LATENCY_SPIKE, "cron job"), (WeaknessType.RECURRING_PATTERN, "cron job"),
            (WeaknessType.CONFIDENCE_DROP, "input drift"), (WeaknessType.CONFIDENCE_LOW, "input drift"),
            (WeaknessType.PREDICTION_ERROR_SPIKE, "input drift (worse)"),
            (WeaknessType.THROUGHPUT_DROP, "upstream outage"),
            (WeaknessType.MEMORY_PRESSURE, "cache warm-up"))


def checklist(first_seen: dict, triggers: list) -> Checklist:
    """Each expected weakness detected (its first tick and severity), then the trigger."""
    c = Checklist("runtime detector demo")
    fallbacks = {f.component: f for f in degraded.active()}
    for kind, scenario in EXPECTED:
        name = f"{kind.value} detected ({scenario})"
        if kind in first_seen:
            t, w = first_seen[kind]
            c.reached(name, f"at t={t}s, severity {w.severity:.2f}: {w.description}")
        elif kind is WeaknessType.MEMORY_PRESSURE and "memory probe" in fallbacks:
            c.errored(name, fallbacks["memory probe"].cause)
        else:
            c.not_reached(name, f"not raised during the {scenario}")
    if triggers:
        c.reached("RSI trigger delivered", f"{len(triggers)} events, first: {triggers[0].reason}")
    else:
        c.not_reached("RSI trigger delivered", "no trigger event reached the subscriber")
    return c


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lower request rate, smaller cache")
    args = parser.parse_args()
    rate = 60 if args.quick else 200
    cache_mb = 96 if args.quick else 256

    # Memory pressure threshold: just under what the cache warm-up will really reach.
    probe = ProcessMemoryProbe()
    now_fraction = probe()
    threshold = now_fraction + 0.5 * (cache_mb << 20) / probe.limit_bytes
    config = RuntimeDetectorConfig(
        window_size=500, latency_spike_threshold_ms=500, latency_spike_count=3,
        memory_pressure_threshold=threshold, trigger_cooldown_secs=20,
        pattern_min_occurrences=3, pattern_confidence_threshold=0.8)
    clock = VirtualClock()
    detector = RuntimeDetector(config, memory_probe=probe, clock=clock)
    tracker = PerformanceTracker()

    triggers: list[RSITriggerEvent] = []
    detector.subscribe(triggers.append)  # what an RSI engine would act on

    print("Vortex runtime detector demo: a simulated inference service, replayed on a virtual "
          f"clock\n({DURATION} s of traffic at ~{rate} requests/s; one monitor tick per second; "
          f"memory limit {probe.limit_bytes / 2**30:.1f} GiB,\nmemory pressure threshold "
          f"{threshold:.2%} of it; trigger cooldown {config.trigger_cooldown_secs:g} s)\n")
    rng = np.random.default_rng(7)
    seq = 0
    active: set[WeaknessType] = set()
    first_seen: dict = {}
    ticks_with_findings = 0
    cache = None
    label = ""
    detector.tick(now=0.0)
    for t in range(DURATION):
        p = phase_at(t)
        if p["label"] != label:
            label = p["label"]
            print(f"  t={t:4d}s  -- {label}")
        if t == CACHE_WARMUP[0]:
            cache = np.ones((cache_mb << 20) // 8)  # really resident: every page is written
        elif t == CACHE_WARMUP[1]:
            cache = None
        seq = serve_one_second(t, rate, rng, detector, tracker, seq)
        clock.now = t + 1.0
        delivered = len(triggers)
        found = detector.tick()
        ticks_with_findings += bool(found)
        now_active = {w.type for w in found}
        for w in found:
            first_seen.setdefault(w.type, (t + 1, w))
            if w.type not in active or w.type is WeaknessType.RECURRING_PATTERN:
                print(f"  t={t + 1:4d}s  + {w.type.value:<23} severity {w.severity:.2f}  "
                      f"{w.description}")
        for kind in sorted(active - now_active, key=lambda k: k.value):
            if kind is not WeaknessType.RECURRING_PATTERN:
                print(f"  t={t + 1:4d}s  - {kind.value} cleared")
        active = now_active
        if len(triggers) > delivered:
            print(f"  t={t + 1:4d}s  >> RSI trigger #{len(triggers)}: {triggers[-1].reason}")
    del cache

    stats = detector.stats()
    print(f"\nDetector: {stats.total_samples:,} samples, {stats.analyses} analyses, "
          f"{ticks_with_findings} of them with weaknesses, {stats.triggers_emitted} triggers "
          f"delivered (the {config.trigger_cooldown_secs:g} s cooldown held back the rest)")
    print("  weaknesses detected (ticks): " + ", ".join(
        f"{k}={v}" for k, v in stats.weaknesses_detected.items() if v))
    summary = tracker.summary()
    print("\nPerformance by mode (percentiles over each mode's newest 10,000 requests):")
    print(f"  {'mode':<9}{'count':>8}{'mean ms':>9}{'p50':>8}{'p95':>8}{'p99':>8}{'conf':>7}")
    for mode, m in summary["modes"].items():
        print(f"  {mode:<9}{m['count']:>8,}{m['mean_latency_ms']:>9.1f}{m['p50_latency_ms']:>8.1f}"
              f"{m['p95_latency_ms']:>8.1f}{m['p99_latency_ms']:>8.1f}{m['mean_confidence']:>7.3f}")
    rates = " ".join(f"{p}:{v['success_rate']:.2f}" for p, v in summary["positions"].items()
                     if v["success_rate"] is not None)
    print(f"  success rate by flux position  {rates}")
    print(f"  sacred positions (3, 6, 9)     {summary['sacred_success_rate']:.3f}   "
          f"overall {summary['success_rate']:.3f}")

    registry = CollectorRegistry()
    registry.register(VortexCollector(detector, tracker))
    wanted = ("vortex_detector_samples", 'vortex_detector_weaknesses_total{type="lat',
              'vortex_mode_latency_seconds{mode="fast",quantile="0.99')
    lines = [ln for ln in generate_latest(registry).decode().splitlines() if ln.startswith(wanted)]
    print("\nPrometheus scrape (excerpt):\n  " + "\n  ".join(lines))

    # What the detector costs the request path, measured here.
    fresh = RuntimeDetector(dataclasses.replace(config, window_size=60))
    record, calls = fresh.record_sample, 200_000
    start = time.perf_counter()
    for _ in range(calls):
        record(35.0, 0.9)
    per_call = (time.perf_counter() - start) / calls * 1e9
    print(f"\nCost: record_sample {per_call:.0f} ns per call (loop included); a window_size=60 "
          f"detector holds {fresh.memory_bytes():,} bytes of C++ state.")
    result = checklist(first_seen, triggers)
    print("\n" + result.render())
    return result.exit_status


if __name__ == "__main__":
    raise SystemExit(main())
