"""HTTP load on one app served three ways, side by side in one run (loopback only, bounded).

The same FastAPI app and model (``benchmarks/http_app.py``) under ``uvicorn --workers 2``:
bare, with prometheus-fastapi-instrumentator (multiprocess mode, right across the workers),
and with Vortex's ASGI middleware and routes (``vortex.serving``, the model called through the
worker's ``infer``). The load comes from wrk in a separate process (``-t1``, a fixed number of
connections, each request a 64-feature JSON body, counted only once the connections split
evenly between the workers: see :func:`wrk`); the variants take turns for ``rounds`` rounds of
``seconds`` each, so the machine's noise hits them alike. Reported per variant:
requests/s, p50, p99 (median over the rounds; wrk's own latency record, which includes
queueing), failures (non-2xx, socket errors and timeouts), and each figure as a ratio to the
bare app. Goals (issue 14): Vortex >= 0.97x the bare app's throughput and >= the
instrumentator's, p50 and p99 <= 1.05x bare.

uvicorn runs with uvloop and httptools (``uvicorn[standard]``, what it is deployed with). Its
pure-Python default (asyncio + h11) answers every keep-alive request ~40 ms late under
``--workers``: ``Config.bind_socket`` creates the listener with protocol 0, accepted sockets
inherit it, asyncio sets ``TCP_NODELAY`` only on ``IPPROTO_TCP`` sockets, and the response's
second write waits for the client's delayed ACK (Nagle; uvicorn issue Kludex/uvicorn#3149).
Measured here: 22 req/s on one connection instead of 2,000.

Where the Vortex variant's control plane runs (``--control``, a comma-separated list: one
Vortex variant each, all side by side in the run): ``worker`` (variant ``vortex``, the default
deployment: every worker stands by, one of them holds it), ``sidecar`` (``vortex-sidecar``:
the workers run with ``VORTEX_CONTROL=never`` and a ``vortex control`` process holds it) or
``none`` (``vortex-none``: no control plane at all, the workers only serve and record). The
training phase runs on the first of them that has a control plane.

Run it alone: ``python benchmarks/bench_http.py --rounds 5 --seconds 5``; under pytest
(``pytest benchmarks/bench_http.py --benchmark-only -s``) it runs 5 rounds of 4 s. With
``--benchmark-disable`` (the test script's smoke pass) one round of 1 s with one worker each.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from vortex.shm.location import segment_dir

HERE = Path(__file__).resolve().parent
FEATURES = [float(i % 17) / 16.0 for i in range(64)]
CONNECTIONS = 8
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = 'BODY'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\n{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("BODY", json.dumps({"features": FEATURES}))


def available_variants() -> tuple[list[str], dict[str, str]]:
    """The variants this machine can run, and why the others are left out."""
    variants, missing = ["bare"], {}
    try:
        import prometheus_fastapi_instrumentator  # noqa: F401
        variants.append("instrumentator")
    except ImportError:
        missing["instrumentator"] = "prometheus-fastapi-instrumentator is not installed"
    variants.append("vortex")
    return variants, missing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONTROL_MODES = ("worker", "sidecar", "none")


def vortex_variant(control: str) -> str:
    """The variant name of Vortex with its control plane placed as ``control``."""
    if control not in CONTROL_MODES:
        raise ValueError(f"control={control!r}: must be one of {CONTROL_MODES}")
    return "vortex" if control == "worker" else f"vortex-{control}"


@contextmanager
def serve(variant: str, workers: int = 2) -> Iterator[tuple[int, Callable[[], None], str]]:
    """``uvicorn --workers`` starting to serve the app as ``variant`` on a loopback port:
    yields the port, a function that waits until the workers answer (start every server first,
    then wait: they start in parallel) and the Vortex home.
    """
    app, _, suffix = variant.partition("-")
    control = suffix if app == "vortex" else ""  # "bare-again": a second bare server (--aa)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix=f"bench-http-{variant}-") as scratch, ExitStack() as procs:
        env = {**os.environ, "VORTEX_BENCH_VARIANT": app, "VORTEX_BENCH_HOME": scratch,
               "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
        if variant == "instrumentator":
            env["PROMETHEUS_MULTIPROC_DIR"] = scratch
        if control:  # the workers stay out of the control plane
            env["VORTEX_CONTROL"] = "never"
        log = procs.enter_context(open(Path(scratch) / "uvicorn.log", "wb"))
        if control == "sidecar":
            procs.enter_context(_running([sys.executable, "-m", "vortex", "control", "--spec",
                                          "http_app:SPEC"], env, log))
        proc = procs.enter_context(_running(
            [sys.executable, "-m", "uvicorn", "http_app:app", "--app-dir", str(HERE), "--host",
             "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level",
             "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"], env, log))
        try:
            yield port, functools.partial(_wait_ready, proc, port, Path(scratch) / "uvicorn.log"), scratch
        finally:
            procs.close()  # stop the processes before their segments go
            shutil.rmtree(segment_dir(scratch), ignore_errors=True)  # the workers' segments


@contextmanager
def _running(argv: list[str], env: dict[str, str], log: Any) -> Iterator[subprocess.Popen]:
    """``argv`` running (output to ``log``) until the block ends, then terminated."""
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def wrk(port: int, seconds: float, script: Path, workers: int = 1, attempts: int = 30) -> dict:
    """One wrk run against ``/predict``: its figures (see :data:`WRK_SCRIPT`), with ``split``
    (how many of wrk's connections each worker holds, most first) and ``attempts``.

    The workers share one listening socket and the first one awake accepts what is queued, so
    wrk's few keep-alive connections split between them by chance for a whole run, and the
    split, not the server, sets the tail: the bare app alone, 16 runs of 4 s, p99 1.87-2.39 ms
    with 4/4, 2.28-2.71 ms with 5/3, 3.53-3.56 ms with 8/0. So with several workers a run only
    counts once its connections split as evenly as they can (seen from /proc), else wrk is
    restarted, up to ``attempts`` times (the last one counts whatever its split; the split is
    in the figures).
    """
    even = [CONNECTIONS // workers + (i < CONNECTIONS % workers) for i in range(workers)]
    for attempt in range(1, attempts + 1):
        proc = subprocess.Popen(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
             "-s", str(script), f"http://127.0.0.1:{port}/predict"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        split = _split(port, proc.pid) if workers > 1 else [CONNECTIONS]
        if split != even and attempt < attempts:
            proc.kill()
            proc.communicate()
            continue
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip()}")
        figures = json.loads(out.strip().splitlines()[-1])
        figures["failures"] = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
        figures["rps"] = figures["requests"] / (figures["duration_us"] / 1e6)
        return {**figures, "split": split, "attempts": attempt}
    raise AssertionError("unreachable: the last attempt returns")


def _split(port: int, client: int, connections: int = CONNECTIONS, timeout: float = 2.0) -> list[int]:
    """How many of ``client``'s connections to ``port`` each server process holds, most first,
    read from /proc once all ``connections`` are up (or after ``timeout``): the client's
    sockets give their local ports, the server's ends of those connections their owners.
    """
    deadline = time.monotonic() + timeout
    while True:
        sockets = _tcp_sockets()
        mine = _socket_inodes(client)
        ports = {local for inode, (local, _) in sockets.items() if inode in mine}
        server_ends = {inode for inode, (local, remote) in sockets.items() if local == port and remote in ports}
        if len(server_ends) >= connections or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    counts = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        held = len(_socket_inodes(int(pid)) & server_ends)
        if held:
            counts.append(held)
    return sorted(counts, reverse=True)


def _tcp_sockets() -> dict[str, tuple[int, int]]:
    """Established TCP sockets: ``{inode: (local port, remote port)}`` (/proc/net/tcp, tcp6)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01":  # ESTABLISHED
                    sockets[fields[9]] = (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16))
    return sockets


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` holds open (empty if it is gone)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def compare(variants: list[str], rounds: int, seconds: float, warm_up: bool = True,
            workers: int = 2, swaps: int = 20) -> dict[str, dict]:
    """Every variant served at once, loaded in turns (order rotated each round); then the
    first Vortex variant with a control plane idle vs under training and ``swaps`` swaps
    (:func:`under_swaps`).
    """
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        servers = {v: stack.enter_context(serve(v, workers)) for v in variants}
        ports = {v: port for v, (port, _, _) in servers.items()}
        for _, wait_ready, _ in servers.values():
            wait_ready()
        for v in variants if warm_up else ():  # first allocations, cold caches
            wrk(ports[v], 1, script, workers)
        for r in range(rounds):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                runs[v].append(wrk(ports[v], seconds, script, workers))
        results = {v: _summary(rs) for v, rs in runs.items()}
        if "bare" in runs:  # each round's ratio to the bare app's run next to it: the noise of
            # a shared machine (minutes-long bursts) cancels better than in ratios of medians
            for v, rs in runs.items():
                results[v]["rounds_x_bare"] = {
                    k: [x[k] / b[k] for x, b in zip(rs, runs["bare"], strict=True)] for k in PAIRED}
                results[v]["p99_paired_x_bare"] = statistics.median(results[v]["rounds_x_bare"]["p99_us"])
        trained = [v for v in servers if v.startswith("vortex") and v != "vortex-none"]
        if swaps and trained:
            port, _, home = servers[trained[0]]
            results[trained[0]]["under_swaps"] = under_swaps(port, home, rounds, seconds, swaps, workers)
    return results


def _json(port: int, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", None if body is None else
                                 json.dumps(body).encode(), {"Content-Type": "application/json"},
                                 method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _training(port: int) -> dict:
    control = _json(port, "GET", "/vortex/status").get("control") or {}
    return control.get("training") or {}


def _training_runs(port: int) -> int:
    return int(_training(port).get("runs_started", 0))


def _wait_trainer_idle(port: int, timeout: float = 120.0) -> None:
    """Until the control plane has no training run in progress or pending (seen twice, a
    publication apart): what the last busy round started ends before an idle round.
    """
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the trainer is still busy after {timeout:.0f} s")
        training = _training(port)
        quiet = quiet + 1 if not training.get("run_in_progress") and training.get("pending_trigger") is None else 0
        time.sleep(0.6)


def under_swaps(port: int, home: str, rounds: int, seconds: float, swaps: int, workers: int) -> dict:
    """Vortex only: wrk idle, then wrk while the control plane trains (feedback keeps coming:
    predict + ``POST /vortex/feedback`` from a client thread) and an operator swaps the active
    version (the registry, as ``vortex models swap`` does; every worker follows), alternating
    for ``rounds`` rounds; ``swaps`` swaps in all. An idle round starts once the trainer has
    finished what the busy round before it started (the app trains on a sample threshold only,
    never on a schedule): idle means no training, no swap, no feedback.
    """
    import threading

    import torch

    from vortex.home import HomeLayout
    from vortex.training.models import mlp
    from vortex.training.registry import ModelRegistry

    registry = ModelRegistry(HomeLayout(home).models)
    deadline = time.monotonic() + 120
    while registry.active_version is None:  # the control plane registers the initial model
        if time.monotonic() > deadline:
            raise RuntimeError("the control plane registered no initial version")
        time.sleep(0.1)
    torch.manual_seed(1)
    versions = [registry.active_version, registry.register(mlp(in_features=64, hidden=128, out_features=10, seed=1))]
    for v in versions:  # the operator's two versions outlive the trainer's cleanup of older ones
        registry.pin(v)
    runs_before = _training_runs(port)
    swapped: list[int] = []

    def feed(stop: threading.Event) -> None:  # labelled samples: the trainer's runs, over one
        # keep-alive connection as a client's pool holds it (not a connection per call)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def post(path: str, body: dict) -> dict:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"POST {path}: {resp.status} {data[:200]!r}")
            return json.loads(data)

        try:
            i = 0
            while not stop.is_set():
                rid = post("/predict", {"features": FEATURES})["request_id"]
                post("/vortex/feedback", {"request_id": rid, "label": i % 10})
                i += 1
                time.sleep(0.005)
        finally:
            conn.close()

    def swap(stop: threading.Event, n: int) -> None:
        for k in range(n):
            if stop.wait(seconds / (n + 1)):
                return
            registry.set_active(versions[(k + 1) % 2], "bench_http")
            swapped.append(k)

    idle, busy = [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        for r in range(rounds):  # the swaps spread over the rounds
            _wait_trainer_idle(port)
            idle.append(wrk(port, seconds, script, workers))
            stop = threading.Event()
            threads = [threading.Thread(target=feed, args=(stop,)),
                       threading.Thread(target=swap, args=(stop, swaps // rounds + (r < swaps % rounds)))]
            for t in threads:
                t.start()
            try:
                busy.append(wrk(port, seconds, script, workers))
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
    summary = {k: _summary(runs) for k, runs in (("idle", idle), ("busy", busy))}
    return {**summary, "swaps": len(swapped), "training_runs": _training_runs(port) - runs_before,
            "rounds_p99_ms": {k: [x["p99_us"] / 1e3 for x in runs] for k, runs in (("idle", idle), ("busy", busy))},
            "p99_busy_x_idle": summary["busy"]["p99_ms"] / summary["idle"]["p99_ms"]}


PAIRED = ("rps", "p50_us", "p99_us")
"""The figures of which each round's ratio to the bare app's round is kept (pooled by
:func:`pooled`)."""


def median_ci(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """The median of ``values`` and a distribution-free confidence interval for it, of at least
    95%: the order statistics whose ranks a Binomial(n, 1/2) puts ``z`` standard deviations
    either side of n/2, rounded outwards (it assumes independent rounds, nothing about their
    distribution; for 30 values, ranks 9 and 22, 98% by simulation); the whole range when
    there are too few values for that.
    """
    s, n = sorted(values), len(values)
    low = math.floor(n / 2 - z * math.sqrt(n) / 2)  # 1-based ranks
    high = math.ceil(1 + n / 2 + z * math.sqrt(n) / 2)
    if low < 1 or high > n:
        return statistics.median(s), s[0], s[-1]
    return statistics.median(s), s[low - 1], s[high - 1]


def pooled(all_results: list[dict[str, dict]]) -> str:
    """Over several runs, each variant's per-round ratios to bare pooled: median and its 95%
    interval, against the goals. ``bare-again`` (``--aa``), the same bare app as a second
    server, shows how far apart two identical servers come out on this machine.
    """
    lines = [f"pooled over {len(all_results)} runs: each round's ratio to the bare app's round, "
             "median [95% interval of the median]"]
    goals = {"rps": ">= 0.97", "p50_us": "<= 1.05", "p99_us": "<= 1.05"}
    for v in all_results[0]:
        if v == "bare":
            continue
        parts = []
        for k in PAIRED:
            ratios = [x for r in all_results for x in r[v]["rounds_x_bare"][k]]
            m, lo, hi = median_ci(ratios)
            parts.append(f"{k.removesuffix('_us')} {m:.3f}x [{lo:.3f}, {hi:.3f}] (goal {goals[k]})")
        lines.append(f"{v} ({len(ratios)} rounds): " + ", ".join(parts))
    return "\n".join(lines)


def _summary(runs: list[dict]) -> dict[str, float]:
    return {"rps": statistics.median(x["rps"] for x in runs),
            "p50_ms": statistics.median(x["p50_us"] for x in runs) / 1e3,
            "p99_ms": statistics.median(x["p99_us"] for x in runs) / 1e3,
            "requests": sum(x["requests"] for x in runs),
            "failures": sum(x["failures"] for x in runs),
            "restarts": sum(x["attempts"] - 1 for x in runs),  # wrk restarted for an even split
            "uneven": sum(max(x["split"]) - min(x["split"]) > 1 for x in runs)}  # counted anyway


def with_ratios(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each variant's figures plus their ratios to the bare app's."""
    bare = results["bare"]
    return {v: {**r, **{f"{k}_x_bare": r[k] / bare[k] for k in ("rps", "p50_ms", "p99_ms")}}
            for v, r in results.items()}


def _flat(results: dict) -> dict[str, float]:
    """``{variant_figure: value}`` (nested dicts joined with ``_``), for ``extra_info``."""
    out = {}
    for key, value in results.items():
        if key in ("rounds_x_bare", "rounds_p99_ms"):  # per-round lists, not figures
            continue
        if isinstance(value, dict):
            out.update({f"{key}_{k}": v for k, v in _flat(value).items()})
        else:
            out[key] = round(value, 4)
    return out


def render(results: dict[str, dict[str, float]], missing: dict[str, str]) -> str:
    lines = [(f"{'variant':<16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failed':>8}"
              f"{'req/s x':>9}{'p50 x':>8}{'p99 x':>8}")]
    for v, r in results.items():
        lines.append(f"{v:<16}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                     f"{r['failures']:>4}/{r['requests']:<5}{r['rps_x_bare']:>7.3f}"
                     f"{r['p50_ms_x_bare']:>8.3f}{r['p99_ms_x_bare']:>8.3f}")
    lines += [f"{v}: not run ({why})" for v, why in missing.items()]
    lines.append("wrk restarts for an even split of its connections between the workers (runs left "
                 "uneven): " + ", ".join(f"{v} {r['restarts']} ({r['uneven']})" for v, r in results.items()))
    for name in (n for n in results if n.startswith("vortex")):
        v, i = results[name], results.get("instrumentator")
        lines.append(f"{name}: throughput {v['rps_x_bare']:.3f}x bare (goal >= 0.97)"
                     + (f", {v['rps'] / i['rps']:.3f}x instrumentator (goal >= 1)" if i else "")
                     + f", p50 {v['p50_ms_x_bare']:.3f}x, p99 {v['p99_ms_x_bare']:.3f}x bare "
                       f"(goal <= 1.05; median of the rounds' own ratios "
                       f"{v.get('p99_paired_x_bare', math.nan):.3f}x)")
        u = v.get("under_swaps")
        if u:
            lines.append(f"{name} under {u['training_runs']} training runs and {u['swaps']} swaps: "
                         f"p99 {u['busy']['p99_ms']:.2f} ms vs {u['idle']['p99_ms']:.2f} ms idle = "
                         f"{u['p99_busy_x_idle']:.3f}x (goal <= 1.5), failed "
                         f"{u['busy']['failures']}/{u['busy']['requests']} (goal 0); wrk restarts idle "
                         f"{u['idle']['restarts']} ({u['idle']['uneven']}), busy {u['busy']['restarts']} "
                         f"({u['busy']['uneven']}); rounds' p99 ms: "
                         + "; ".join(f"{k} " + " ".join(f"{x:.2f}" for x in xs)
                                     for k, xs in u["rounds_p99_ms"].items()))
    return "\n".join(lines)


def test_split_reads_which_process_holds_each_connection():
    """:func:`_split` from /proc: a client's 3 connections, 1 accepted by another process on
    the same listening socket (as uvicorn's workers share theirs), 2 by this one; a connection
    of another client to the same port (the feedback client's) is not counted.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with ExitStack() as stack:
        other = stack.enter_context(subprocess.Popen(
            [sys.executable, "-c", "import socket, sys, time\n"
             "s = socket.socket(fileno=int(sys.argv[1]))\nc = s.accept()[0]\nprint('accepted', flush=True)\n"
             "time.sleep(120)", str(listener.fileno())],
            pass_fds=[listener.fileno()], stdout=subprocess.PIPE, text=True))
        stack.callback(other.kill)
        client = stack.enter_context(subprocess.Popen(
            [sys.executable, "-c", "import socket, sys, time\n"
             "c = [socket.create_connection(('127.0.0.1', int(sys.argv[1]))) for _ in range(3)]\n"
             "print('connected', flush=True)\ntime.sleep(120)", str(port)], stdout=subprocess.PIPE, text=True))
        stack.callback(client.kill)
        assert client.stdout is not None and client.stdout.readline() == "connected\n"
        assert other.stdout is not None and other.stdout.readline() == "accepted\n"  # the first
        bystander = socket.create_connection(("127.0.0.1", port))
        stack.callback(bystander.close)
        for _ in range(3):  # the bystander's end and 2 of the client's
            stack.callback(listener.accept()[0].close)
        assert _split(port, client.pid, connections=3) == [2, 1]
    listener.close()


def test_http_load_side_by_side(benchmark, request):
    if shutil.which("wrk") is None:
        pytest.skip("wrk is missing: apt-get install wrk (scripts/_venv.sh does where it runs as root)")
    for module in ("uvicorn", "uvloop", "httptools", "fastapi"):
        pytest.importorskip(module, reason=f"{module} is missing (the test extra installs it)")
    quick = bool(request.config.getoption("benchmark_disable", False))
    variants, missing = available_variants()
    benchmark.group = "http: uvicorn --workers 2"
    benchmark.extra_info["subject"] = "vortex"
    results: dict = {}
    benchmark.pedantic(lambda: results.update(with_ratios(
        compare(variants, rounds=1 if quick else 5, seconds=1 if quick else 4, warm_up=not quick,
                workers=1 if quick else 2, swaps=4 if quick else 20))),
        rounds=1, iterations=1)
    print("\n" + render(results, missing))
    benchmark.extra_info.update(_flat(results))
    for v, r in results.items():
        assert r["requests"] > 0 and r["failures"] == 0, (v, r)
    swaps = results["vortex"]["under_swaps"]
    assert swaps["busy"]["failures"] == 0 and swaps["swaps"] == (4 if quick else 20), swaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--control", default="worker",
                        help="where the Vortex variants' control planes run: a comma-separated "
                             f"list of {', '.join(CONTROL_MODES)} (default: worker)")
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole comparison (fresh servers each time); with more "
                             "than one, the rounds' ratios to bare are also pooled over the runs")
    parser.add_argument("--aa", action="store_true",
                        help="also serve the bare app a second time (variant bare-again): the "
                             "ratios two identical servers reach on this machine, i.e. its noise")
    args = parser.parse_args()
    variants, missing = available_variants()
    variants = ([v for v in variants if v != "vortex"] + ["bare-again"] * args.aa
                + [vortex_variant(c) for c in args.control.split(",")])
    all_results = []
    for run in range(args.runs):
        all_results.append(with_ratios(compare(variants, args.rounds, args.seconds, swaps=args.swaps)))
        print(f"run {run + 1} of {args.runs}, load average {os.getloadavg()[0]:.1f}\n"
              + render(all_results[-1], missing), flush=True)
    if args.runs > 1:
        print(pooled(all_results))


if __name__ == "__main__":
    main()
