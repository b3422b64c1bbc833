"""Benchmark of the sample service: prints one JSON object of metrics with their direction."""

import json
import time

import numpy as np

from sample_service import Service, make_data


def main() -> None:
    svc = Service()
    x, y = make_data(600, seed=2024)
    for row in x[:20]:  # warm up
        svc.predict(row, "thorough")
    svc._cache.clear()
    times = []
    for row in x[:300]:  # distinct rows: no cache hits; the median resists preemption
        t0 = time.perf_counter()
        svc.predict(row, "thorough")
        times.append(time.perf_counter() - t0)
    latency_ms = float(np.median(times)) * 1000
    nll, correct = 0.0, 0
    for row, label in zip(x[250:], y[250:]):
        pred, p, _ = svc.predict(row, "fast")
        nll -= float(np.log(max(p[label], 1e-12)))
        correct += pred == label
    n = len(x) - 250
    rng = np.random.default_rng(1)
    errors = 0
    for row in x[:200]:
        row = row.copy()
        if rng.random() < 0.2:
            row[rng.integers(0, row.size)] = np.nan
        try:
            svc.predict(row, "fast")
        except ValueError:
            errors += 1
    for row in x:
        svc.predict(row, "thorough")
    print(json.dumps({
        "latency_ms": {"value": latency_ms, "better": "lower"},
        "nll": {"value": nll / n, "better": "lower"},
        "accuracy": {"value": correct / n, "better": "higher"},
        "error_rate": {"value": errors / 200, "better": "lower"},
        "cache_kb": {"value": svc.cache_bytes() / 1024, "better": "lower"},
    }))


if __name__ == "__main__":
    main()
