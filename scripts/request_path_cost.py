"""What Vortex adds to one HTTP request, in CPU instructions (valgrind callgrind).

The app of ``benchmarks/http_app.py`` (what ``benchmarks/bench_http.py`` serves) is built
twice, bare and with Vortex (middleware, ``/vortex`` routes, the handler answering through the
worker's ``infer``: model slot, request id, pending ring, shared-memory segment; no control
plane), each in its own process, and driven in process through the ASGI interface (``await
app(scope, receive, send)``, a ``POST /predict`` as wrk sends it, no server, no socket). Each
process runs under ``valgrind --tool=callgrind``, which dumps its counters at the two marks
around the measured requests (``os.getppid()``, which nothing else calls), so the figure is
the measured requests' instructions alone: deterministic to a few instructions per request,
unlike a time on a shared machine. Printed: instructions per request of each app, and their
difference, what Vortex adds.

The worker's registry-following thread is parked (an hour between checks) so that its polling,
which callgrind would stretch with the run's slowed-down wall time, does not count.

``--parts`` measures what Vortex adds piece by piece instead, in one process with a model of
constant logits (so that the model call costs next to nothing) and no framework: a minimal
ASGI app that answers every request, the same inside ``VortexMiddleware``, the same calling the
worker's ``infer``, both; and a Starlette router with the route alone or with ``/vortex``
mounted before it.

Run: ``python scripts/request_path_cost.py [--requests 2000] [--parts] [--keep DIR]`` (a few
minutes; with ``--keep`` the callgrind files stay in DIR, the measured parts in
``<name>.out.2``, ``.3``, ..., for ``callgrind_annotate``). ``--no-valgrind`` times the same
loops instead (wall time: noisy, for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("bare", "vortex")
FEATURES = [float(i % 17) / 16.0 for i in range(64)]  # bench_http's body
BODY = json.dumps({"features": FEATURES}).encode()
MARK = "getppid"  # the C function whose calls delimit the measured part


def _scope() -> dict:
    """A ``POST /predict`` scope as uvicorn (httptools) builds it for wrk's request."""
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 40000), "scheme": "http",
            "method": "POST", "root_path": "", "path": "/predict", "raw_path": b"/predict",
            "query_string": b"", "headers": [(b"host", b"127.0.0.1:8000"),
                                             (b"content-type", b"application/json"),
                                             (b"content-length", str(len(BODY)).encode())],
            "state": {}}


def _load_app(app_name: str, home: str):
    os.environ.update(VORTEX_BENCH_VARIANT=app_name, VORTEX_BENCH_HOME=home, VORTEX_CONTROL="never")
    spec = importlib.util.spec_from_file_location("http_app", ROOT / "benchmarks" / "http_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(app_name: str, requests: int, warmup: int) -> None:
    """Serve ``warmup`` requests, then ``requests`` between the two marks; check every answer."""
    home = tempfile.mkdtemp(prefix=f"request-path-cost-{app_name}-")
    module = _load_app(app_name, home)
    service = getattr(module, "service", None)
    if service is not None:
        service.follow_interval = 3600.0
        service.start()
    app = module.app
    answers: list[tuple[int, bool]] = []
    status = 0

    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            echoed = any(name == b"x-request-id" for name, _ in message.get("headers", ()))
            answers.append((status, echoed))

    async def serve(n: int) -> None:
        for _ in range(n):
            await app(_scope(), receive, send)

    async def run() -> float:
        await serve(warmup)  # first calls allocate, import lazily, fill caches
        os.getppid()
        start = time.perf_counter()
        await serve(requests)
        elapsed = time.perf_counter() - start
        os.getppid()
        return elapsed

    try:
        elapsed = asyncio.run(run())
    finally:
        if service is not None:
            service.stop()
        from vortex.shm.location import segment_dir

        shutil.rmtree(segment_dir(home), ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
    bad = [a for a in answers if a != (200, service is not None)]
    if len(answers) != warmup + requests or bad:
        raise SystemExit(f"{app_name}: {len(answers)} answers, unexpected (status, echoed id): {bad[:3]}")
    print(json.dumps({"app": app_name, "seconds_per_request": elapsed / requests}))


PARTS = ("app alone", "middleware around it", "app calling infer", "middleware + infer",
         "router: the route", "router: /vortex mounted first")


def child_parts(requests: int, warmup: int) -> None:
    """Each of :data:`PARTS` for ``requests`` requests, between marks (see ``--parts``)."""
    import numpy as np
    import torch
    from starlette.responses import Response
    from starlette.routing import Mount, Route, Router

    from vortex.serving import ServiceSpec
    from vortex.serving.asgi import VortexMiddleware, vortex_app
    from vortex.serving.worker import ServingWorker
    from vortex.shm.location import segment_dir

    class ConstantLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("logits", torch.linspace(-1.0, 1.0, 10)[None])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits

    home = tempfile.mkdtemp(prefix="request-path-cost-parts-")
    spec = ServiceSpec(home=home, model_factory="vortex.training.models:mlp", feature_dim=64, n_classes=10,
                       initial_model=ConstantLogits, factory_kwargs={"in_features": 64, "out_features": 10})
    worker = ServingWorker(spec, follow_interval=3600.0)
    worker.start()
    service = type("Service", (), {"worker": worker})()  # what the middleware reads of a VortexService
    x = np.asarray(FEATURES, np.float32)
    start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    body = {"type": "http.response.body", "body": b"{}"}

    def answering(infer):
        async def app(scope, receive, send):
            if infer is not None:
                infer(x)
            await send(dict(start))
            await send(dict(body))
        return app

    async def endpoint(request):
        return Response(b"{}")

    route = Route("/predict", endpoint, methods=["POST"])
    apps = [answering(None), VortexMiddleware(answering(None), service), answering(worker.infer),
            VortexMiddleware(answering(worker.infer), service), Router([route]),
            Router([Mount("/vortex", vortex_app(service)), route])]

    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        pass

    async def serve(app, n: int) -> None:
        for _ in range(n):
            await app(_scope(), receive, send)

    async def run() -> None:
        for app in apps:
            await serve(app, warmup)
        for app in apps:
            os.getppid()
            await serve(app, requests)
        os.getppid()

    try:
        asyncio.run(run())
        assert worker.segment.records == 2 * (warmup + requests)  # the middleware + infer part's
    finally:
        worker.stop()
        shutil.rmtree(segment_dir(home), ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def _totals(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no totals line")


def _run(name: str, requests: int, warmup: int, out: Path, valgrind: bool) -> str:
    """Run the child ``name`` (an app, or ``parts``), under callgrind if ``valgrind``; its output."""
    argv = [sys.executable, __file__, "--child", name, "--requests", str(requests), "--warmup", str(warmup)]
    env = {**os.environ, "PYTHONHASHSEED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if valgrind:
        argv = ["valgrind", "--tool=callgrind", f"--dump-before={MARK}",
                f"--callgrind-out-file={out / name}.out", *argv]
    run = subprocess.run(argv, check=False, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{name} failed ({run.returncode}):\n{run.stdout}\n{run.stderr[-4000:]}")
    return run.stdout


def measure(app_name: str, requests: int, warmup: int, out: Path, valgrind: bool) -> float:
    """Instructions (or seconds) per request of ``app_name``."""
    stdout = _run(app_name, requests, warmup, out, valgrind)
    if not valgrind:
        return json.loads(stdout.strip().splitlines()[-1])["seconds_per_request"]
    # dumps: .1 up to the first mark, .2 between the marks (the measured requests), then the rest
    return _totals(out / f"{app_name}.out.2") / requests


def measure_parts(requests: int, warmup: int, out: Path) -> None:
    """Print instructions per request of each of :data:`PARTS` and what Vortex adds."""
    _run("parts", requests, warmup, out, True)
    cost = {part: _totals(out / f"parts.out.{i + 2}") / requests for i, part in enumerate(PARTS)}
    print(f"instructions per request ({requests} requests after {warmup}), model of constant logits:")
    for part in PARTS:
        print(f"  {part:<30} {cost[part]:>9,.0f}")
    for what, more, less in (("the middleware adds", "middleware around it", "app alone"),
                              ("around infer, it adds", "middleware + infer", "app calling infer"),
                              ("/vortex mounted first adds", "router: /vortex mounted first", "router: the route")):
        print(f"  {what:<30} {cost[more] - cost[less]:>+9,.0f}")


def main() -> None:
    """Measure both apps (or ``--parts``) and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per app")
    parser.add_argument("--warmup", type=int, default=200, help="requests served before measuring")
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    parser.add_argument("--no-valgrind", action="store_true", help="time the loop instead (noisy)")
    parser.add_argument("--parts", action="store_true", help="what Vortex adds, piece by piece")
    parser.add_argument("--child", choices=(*APPS, "parts"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0:
        parser.error(f"--requests={args.requests}, --warmup={args.warmup}: need >= 1 and >= 0")
    if args.child == "parts":
        child_parts(args.requests, args.warmup)
        return
    if args.child:
        child(args.child, args.requests, args.warmup)
        return
    valgrind = not args.no_valgrind
    if valgrind and shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind), or pass --no-valgrind")
    if args.parts and not valgrind:
        parser.error("--parts counts instructions: it needs valgrind")
    with tempfile.TemporaryDirectory(prefix="request-path-cost-") as scratch:
        out = args.keep or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        if args.parts:
            measure_parts(args.requests, args.warmup, out)
            return
        cost = {a: measure(a, args.requests, args.warmup, out, valgrind) for a in APPS}
    if valgrind:
        print(f"instructions per request ({args.requests} requests after {args.warmup}):")
        for a in APPS:
            print(f"  {a:<7} {cost[a]:>10,.0f}")
        print(f"  vortex - bare {cost['vortex'] - cost['bare']:>+9,.0f}   "
              f"({cost['vortex'] / cost['bare']:.3f}x)")
    else:
        for a in APPS:
            print(f"  {a:<7} {cost[a] * 1e6:8.1f} us per request")
        print(f"  vortex - bare {(cost['vortex'] - cost['bare']) * 1e6:+.1f} us")


if __name__ == "__main__":
    main()
