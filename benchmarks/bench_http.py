"""HTTP load on one app served three ways, side by side in one run (loopback only, bounded).

The same FastAPI app and model (``benchmarks/http_app.py``) under ``uvicorn --workers 2``:
bare, with prometheus-fastapi-instrumentator (multiprocess mode, right across the workers),
and with Vortex's ASGI middleware (``vortex.serving``; skipped, saying so, where that package
is missing). The load comes from wrk in a separate process (``-t1``, a fixed number of
connections, each request a 64-feature JSON body); the variants take turns for ``rounds``
rounds of ``seconds`` each, so the machine's noise hits them alike. Reported per variant:
requests/s, p50, p99 (median over the rounds; wrk's own latency record, which includes
queueing), failures (non-2xx, socket errors and timeouts), and each figure as a ratio to the
bare app. Goals (issue 14): Vortex >= 0.97x the bare app's throughput and >= the
instrumentator's, p50 and p99 <= 1.05x bare.

uvicorn runs with uvloop and httptools (``uvicorn[standard]``, what it is deployed with). Its
pure-Python default (asyncio + h11) answers every request ~40 ms late under ``--workers``: the
listening socket the workers inherit has lost its protocol number, so asyncio does not set
``TCP_NODELAY`` on the connections, and the response's second write waits for the client's
delayed ACK (Nagle). Measured here: 22 req/s on one connection instead of 2,000.

Run it alone: ``python benchmarks/bench_http.py --rounds 5 --seconds 5``; under pytest
(``pytest benchmarks/bench_http.py --benchmark-only -s``) it runs 5 rounds of 4 s. With
``--benchmark-disable`` (the test script's smoke pass) one round of 1 s with one worker each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
FEATURES = [float(i % 17) / 16.0 for i in range(64)]
CONNECTIONS = 8
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, '
    .. '"status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""" % json.dumps({"features": FEATURES})


def available_variants() -> tuple[list[str], dict[str, str]]:
    """The variants this machine can run, and why the others are left out."""
    variants, missing = ["bare"], {}
    try:
        import prometheus_fastapi_instrumentator  # noqa: F401
        variants.append("instrumentator")
    except ImportError:
        missing["instrumentator"] = "prometheus-fastapi-instrumentator is not installed"
    try:
        import vortex.serving  # noqa: F401
        variants.append("vortex")
    except ImportError:
        missing["vortex"] = "vortex.serving (the ASGI middleware) is not on this branch yet"
    return variants, missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(variant: str, workers: int = 2) -> Iterator[tuple[int, Callable[[], None]]]:
    """``uvicorn --workers`` starting to serve the app as ``variant`` on a loopback port:
    yields the port and a function that waits until the workers answer (start every server
    first, then wait: they start in parallel)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix=f"bench-http-{variant}-") as scratch:
        env = {**os.environ, "VORTEX_BENCH_VARIANT": variant, "VORTEX_BENCH_HOME": scratch,
               "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
        if variant == "instrumentator":
            env["PROMETHEUS_MULTIPROC_DIR"] = scratch
        log = open(Path(scratch) / "uvicorn.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "http_app:app", "--app-dir", str(HERE), "--host",
             "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level",
             "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield port, functools.partial(_wait_ready, proc, port, Path(scratch) / "uvicorn.log")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120.0) -> None:
    """Until both workers answer (a few predictions on fresh connections)."""
    body = json.dumps({"features": FEATURES}).encode()
    deadline = time.monotonic() + timeout
    answered = 0
    while answered < 10:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not come up: {log.read_text()[-2000:]}")
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                answered += resp.status == 200
        except OSError:
            time.sleep(0.1)


def wrk(port: int, seconds: float, script: Path) -> dict:
    """One wrk run against ``/predict``: its figures (see :data:`WRK_SCRIPT`)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(script), f"http://127.0.0.1:{port}/predict"],
        capture_output=True, text=True, timeout=seconds + 60, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["failures"] = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
    return figures


def compare(variants: list[str], rounds: int, seconds: float, warm_up: bool = True,
            workers: int = 2) -> dict[str, dict[str, float]]:
    """Every variant served at once, loaded in turns (order rotated each round)."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        servers = {v: stack.enter_context(serve(v, workers)) for v in variants}
        ports = {v: port for v, (port, _) in servers.items()}
        for _, wait_ready in servers.values():
            wait_ready()
        for v in variants if warm_up else ():  # first allocations, cold caches
            wrk(ports[v], 1, script)
        for r in range(rounds):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                runs[v].append(wrk(ports[v], seconds, script))
    return {v: {"rps": statistics.median(x["rps"] for x in rs),
                "p50_ms": statistics.median(x["p50_us"] for x in rs) / 1e3,
                "p99_ms": statistics.median(x["p99_us"] for x in rs) / 1e3,
                "requests": sum(x["requests"] for x in rs),
                "failures": sum(x["failures"] for x in rs)}
            for v, rs in runs.items()}


def with_ratios(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each variant's figures plus their ratios to the bare app's."""
    bare = results["bare"]
    return {v: {**r, **{f"{k}_x_bare": r[k] / bare[k] for k in ("rps", "p50_ms", "p99_ms")}}
            for v, r in results.items()}


def render(results: dict[str, dict[str, float]], missing: dict[str, str]) -> str:
    lines = [f"{'variant':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
             f"{'req/s x':>9}{'p50 x':>8}{'p99 x':>8}"]
    for v, r in results.items():
        lines.append(f"{v:<16}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                     f"{r['failures']:>4}/{r['requests']:<5}{r['rps_x_bare']:>7.3f}"
                     f"{r['p50_ms_x_bare']:>8.3f}{r['p99_ms_x_bare']:>8.3f}")
    lines += [f"{v}: not run ({why})" for v, why in missing.items()]
    return "\n".join(lines)


def test_http_load_side_by_side(benchmark, request):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is missing: apt-get install wrk (scripts/_venv.sh does where it runs as root)")
    quick = bool(request.config.getoption("benchmark_disable", False))
    variants, missing = available_variants()
    benchmark.group = "http: uvicorn --workers 2"
    benchmark.extra_info["subject"] = "vortex"
    results: dict = {}
    benchmark.pedantic(lambda: results.update(with_ratios(
        compare(variants, rounds=1 if quick else 5, seconds=1 if quick else 4, warm_up=not quick,
                workers=1 if quick else 2))),
        rounds=1, iterations=1)
    print("\n" + render(results, missing))
    for v, r in results.items():
        benchmark.extra_info.update({f"{v}_{k}": round(x, 4) for k, x in r.items()})
        assert r["requests"] > 0 and r["failures"] == 0, (v, r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    variants, missing = available_variants()
    print(render(with_ratios(compare(variants, args.rounds, args.seconds)), missing))


if __name__ == "__main__":
    main()
