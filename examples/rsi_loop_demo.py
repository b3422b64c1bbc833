"""Self-modification loop on the sample service: weakness -> proposal -> sandbox -> apply.

A copy of ``examples/sample_service`` is served in this process through a hot-reloading
``vortex.tunables.Tunables``. The demo asks for a thorough mode 25 % faster than it measures and
for a mean confidence of at least 0.7; a runtime detector records the served requests and its
rules find both weaknesses, the engine proposes tunable changes (the temperature is fitted on the served logits and their
labels), tests each in the sandbox (tests + interleaved benchmark), applies the ones that pass
and the service, still running, is measured again. It ends with a checklist of the stages it
shows (weakness detected, proposal tested in isolation, patch applied, its effect on the served
requests); the exit status is 1 unless all were reached.

    python examples/rsi_loop_demo.py [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def serve(service, engine, detector, x, y, n: int):  # type: ignore[no-untyped-def]
    """Serve n thorough requests, recorded by the detector and the engine's watch; returns the
    figures a performance tracker would report."""
    import numpy as np

    lat, conf, logits = [], [], []
    for i in range(n):
        row = x[i % len(x)]
        service._cache.clear()  # measure the model, not the cache
        t0 = time.perf_counter()
        _, p, z = service.predict(row, "thorough")
        ms = (time.perf_counter() - t0) * 1000
        lat.append(ms)
        conf.append(float(p.max()))
        logits.append(z)
        detector.record_sample(ms, float(p.max()))
        engine.observe(latency_ms=ms, confidence=float(p.max()))
    return {"total": n, "error_rate": None,
            "modes": {"thorough": {"count": n, "mean_latency_ms": float(np.mean(lat)),
                                   "p50_latency_ms": float(np.median(lat)),
                                   "mean_confidence": float(np.mean(conf))}},
            "_logits": np.array(logits), "_labels": np.array([y[i % len(y)] for i in range(n)])}


def checklist(result, proposals, before, after):  # type: ignore[no-untyped-def]
    """The stages this demo shows, each with its figure."""
    from vortex.demo.checklist import Checklist

    c = Checklist("RSI loop demo")
    if result.weaknesses:
        c.reached("weakness detected", "; ".join(
            f"{w['type']} {w['metric_value']:.3f} vs threshold {w['baseline_value']:.3f}"
            for w in result.weaknesses))
    else:
        c.not_reached("weakness detected", result.skipped_reason or "the served figures met every objective")
    tested = [p for p in proposals if p.test_result]
    applied = [p for p in tested if p.status.value in ("applied", "rolled_back")]
    shown = applied or tested
    for p in shown:
        tr = p.test_result
        name = f"{p.id} tested in isolation"
        lo, hi = tr.get("delta_interval") or (float("nan"), float("nan"))
        figure = (f"tests {tr['tests_passed']}/{tr['tests_run']} passed, {tr['metric']} "
                  f"{tr.get('performance_delta') or 0:+.1%} [{lo:+.1%}, {hi:+.1%}], "
                  f"isolated: {'yes' if tr['isolated'] else 'no'}")
        if tr.get("errored"):
            c.errored(name, f"the sandbox could not judge it: {(tr.get('errors') or ['?'])[-1]}")
        elif not tr["isolated"]:
            c.errored(name, f"{figure} ({tr['isolation']}); install bubblewrap")
        elif tr["passed"]:
            c.reached(name, figure)
        else:
            c.not_reached(name, "failed: " + "; ".join(tr.get("errors") or []))
    if not shown:
        c.not_reached("proposal tested in isolation", "no proposal was tested: " + "; ".join(result.errors))
    if applied:
        c.reached("patch applied", "; ".join(p.description for p in applied))
        speedup = before["p50_latency_ms"] / after["p50_latency_ms"]
        gained = after["mean_confidence"] - before["mean_confidence"]
        figure = (f"same requests, same service object: median thorough latency "
                  f"{before['p50_latency_ms']:.4f} -> {after['p50_latency_ms']:.4f} ms "
                  f"({speedup:.2f}x), mean confidence {before['mean_confidence']:.3f} -> "
                  f"{after['mean_confidence']:.3f}")
        if speedup > 1.2 or gained > 0.05:
            c.reached("patch's effect on served requests", figure)
        else:
            c.not_reached("patch's effect on served requests", figure + ": no clear gain")
    else:
        c.not_reached("patch applied", "nothing passed its sandbox test")
        c.not_reached("patch's effect on served requests", "no patch was applied")
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and benchmark repeats")
    ap.add_argument("--workdir", help="where the service copy and the Vortex home go")
    args = ap.parse_args(argv)

    import vortex
    from vortex.rsi import RSIEngine

    work = args.workdir or tempfile.mkdtemp(prefix="vortex-rsi-demo-")
    target = os.path.join(work, "service")
    if os.path.exists(target):
        shutil.rmtree(target)
    shutil.copytree(os.path.join(HERE, "sample_service"), target,
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    sys.path.insert(0, target)
    from sample_service import Service, make_data

    tunables = vortex.Tunables(os.path.join(target, "sample_service", "tunables.toml"),
                               check_interval=0.05)
    service = Service(tunables)
    x, y = make_data(400, seed=11)
    n = 150 if args.quick else 400

    figures: dict = {}
    detector = vortex.RuntimeDetector()
    engine = RSIEngine(
        target, os.path.join(work, "home"),
        vortex.RSIConfig(enabled=True, min_inferences_before_rsi=50, watch_requests=n // 2,
                         benchmark_repeats=6 if args.quick else 9),
        weakness_source=lambda: (detector.total_samples, detector.assess()),
        calibration_data=lambda: (figures["_logits"], figures["_labels"]),
        tunables=[tunables])

    for row in x[:50]:  # warm up, so "before" is not measured cold
        service.predict(row, "thorough")
    figures.update(serve(service, engine, detector, x, y, n))
    before = figures["modes"]["thorough"]
    # the service's objectives: a thorough mode 25 % faster than its median, mean confidence >= 0.7
    detector.update_config(vortex.RuntimeDetectorConfig(
        latency_spike_threshold_ms=before["p50_latency_ms"] * 0.75, confidence_low_threshold=0.7))
    print(f"before: thorough latency mean {before['mean_latency_ms']:.4f} ms "
          f"(median {before['p50_latency_ms']:.4f} ms), "
          f"mean confidence {before['mean_confidence']:.3f}, tunables {tunables.values()}")

    t0 = time.perf_counter()
    result = engine.rsi_cycle()
    cycle_s = time.perf_counter() - t0
    print(f"cycle: {result.proposals_created} proposals, {result.applied} applied, "
          f"{result.queued} queued, {result.rejected} rejected in {cycle_s:.1f} s; "
          f"errors: {result.errors}")
    for p in engine.list_proposals():
        tr = p.test_result or {}
        lo, hi = tr.get("delta_interval") or (float("nan"), float("nan"))
        print(f"  {p.id} [{p.status.value}, risk {p.risk.value}] {p.description}\n"
              f"    sandbox: {tr.get('tests_passed')}/{tr.get('tests_run')} tests passed, "
              f"{tr.get('metric')} better by {tr.get('performance_delta') or 0:+.1%} "
              f"(95% CI {lo:+.1%} .. {hi:+.1%})")

    figures.update(serve(service, engine, detector, x, y, n))  # the same service object, reloaded tunables
    after = figures["modes"]["thorough"]
    print(f"after:  thorough latency mean {after['mean_latency_ms']:.4f} ms "
          f"(median {after['p50_latency_ms']:.4f} ms), "
          f"mean confidence {after['mean_confidence']:.3f}, tunables {tunables.values()}")
    # the speed-up of the median: a GC pause or a neighbour's burst moves the mean of a few
    # hundred sub-millisecond requests, not their median
    speedup = before["p50_latency_ms"] / after["p50_latency_ms"]
    summary = {"mean_latency_before_ms": before["mean_latency_ms"],
               "mean_latency_after_ms": after["mean_latency_ms"],
               "median_latency_before_ms": before["p50_latency_ms"],
               "median_latency_after_ms": after["p50_latency_ms"], "speedup": speedup,
               "confidence_before": before["mean_confidence"],
               "confidence_after": after["mean_confidence"], "applied": result.applied,
               "cycle_secs": cycle_s, "audit_ok": engine.audit.verify().ok}
    result_checklist = checklist(result, engine.list_proposals(), before, after)
    summary["checklist"] = result_checklist.to_dict()
    print(result_checklist.render())
    print(json.dumps(summary))
    return result_checklist.exit_status if summary["audit_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
