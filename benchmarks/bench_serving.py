"""What a serving worker adds to the request path: ``ServingWorker.infer`` against
``Orchestrator.infer`` in one process, same model, same inputs.

A serving worker answers through a bare Orchestrator's compiled request path and then records
what the control plane and the feedback of any worker need: the request into its shared-memory
segment (``WorkerSegment.record_sample``) and the request into its pending ring (key, time,
version, confidence, output, class probabilities, features). The goal (issue 14): that extra is
a few microseconds, so a worker's ``infer`` is within a few percent of ``Orchestrator.infer``.

Groups (ratios printed by conftest.py):

* ``serving.infer``: ``ServingWorker.infer`` outside an HTTP request (it mints the request id
  and records the segment itself) and inside one (the request id and the segment record come
  from the ASGI middleware's context: ``infer`` only writes the pending ring), against
  ``Orchestrator.infer`` with its detector (the single-process equivalent). The model is the
  digits MLP of benchmarks/http_app.py;
* ``serving.overhead``: the same with a model returning constant logits, whose own cost is next
  to nothing, so that the ratio shows the bookkeeping alone;
* ``serving.http_request.<model>``: one HTTP request through a plain ASGI app in process (no
  server, no framework): the model called as benchmarks/http_app.py's bare handler calls it,
  against ``VortexMiddleware`` around the same app calling ``ServingWorker.infer`` (request id,
  context, timing, segment record, pending ring).

Run: ``PYTHONPATH=$PWD/src pytest benchmarks/bench_serving.py --benchmark-only``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from vortex import Orchestrator
from vortex.serving import ServiceSpec
from vortex.serving.worker import RequestContext, ServingWorker, current_request
from vortex.shm.location import segment_dir
from vortex.training.models import mlp

CALLS = 1000
DIM, CLASSES = 64, 10
FACTORY_KW = {"in_features": DIM, "hidden": 128, "out_features": CLASSES, "seed": 0}
INPUTS = list(np.random.default_rng(0).normal(size=(CALLS, DIM)).astype(np.float32))


class _ConstantLogits(torch.nn.Module):
    """Fixed logits for any input: a model call of almost no cost."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("logits", torch.linspace(-1.0, 1.0, CLASSES)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


MODELS = {"mlp": lambda: mlp(**FACTORY_KW).eval(), "constant": _ConstantLogits}
GROUPS = {"mlp": "serving.infer", "constant": "serving.overhead"}


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    yield h
    shutil.rmtree(segment_dir(h), ignore_errors=True)


def _loop(infer):
    def run():
        for x in INPUTS:
            infer(x)
    return run


@pytest.fixture(params=sorted(MODELS))
def model_name(request):
    return request.param


@pytest.fixture
def worker(home, model_name):
    spec = ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=DIM,
                       n_classes=CLASSES, initial_model=MODELS[model_name],
                       factory_kwargs=FACTORY_KW)
    w = ServingWorker(spec)
    w.start()
    yield w
    w.stop()


def _benchmark(benchmark, group, run):
    benchmark.group = group
    benchmark.extra_info["calls_per_round"] = CALLS
    run()  # warm up (first calls allocate)
    benchmark.pedantic(run, rounds=15, iterations=1)


def test_orchestrator_infer(benchmark, home, model_name):
    orch = Orchestrator(MODELS[model_name](), "vortex.training.models:mlp", str(home / "orch"),
                        feature_dim=DIM, factory_kwargs=FACTORY_KW)
    orch.with_runtime_detector()
    try:
        _benchmark(benchmark, GROUPS[model_name], _loop(orch.infer))
    finally:
        orch.close()


def test_vortex_serving_worker_infer(benchmark, worker, model_name):
    _benchmark(benchmark, GROUPS[model_name], _loop(worker.infer))
    assert worker.segment.records >= CALLS


def test_serving_worker_infer_in_http_request(benchmark, worker, model_name):
    infer = worker.infer

    def run():
        for x in INPUTS:
            token = current_request.set(RequestContext("0123456789abcdef0123456789abcdef"))
            infer(x)
            current_request.reset(token)

    _benchmark(benchmark, GROUPS[model_name], run)


# ------------------------------------------------------------------ one HTTP request, in process

_SCOPE = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-type", b"application/json")]}


async def _receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message):
    pass


def _asgi_app(answer):
    """An ASGI app answering every request with ``answer(x)`` (what a handler does, no framework)."""
    async def app(scope, receive, send):
        answer(INPUTS[0])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


def _asgi_loop(app):
    import asyncio

    async def requests():
        for _ in range(CALLS):
            await app(dict(_SCOPE), _receive, _send)

    return lambda: asyncio.run(requests())  # a loop per round (closed): ~0.1 us a request


def test_asgi_request_bare_model_call(benchmark, model_name):
    model = MODELS[model_name]()

    def answer(x):
        with torch.inference_mode():
            return torch.softmax(model(torch.from_numpy(x)[None]), dim=1)[0].max(dim=0)

    _benchmark(benchmark, f"serving.http_request.{model_name}", _asgi_loop(_asgi_app(answer)))


def test_vortex_asgi_request_middleware_and_worker_infer(benchmark, worker, model_name):
    from vortex.serving.asgi import VortexMiddleware

    class _Service:  # what the middleware reads of a started VortexService
        def __init__(self, w):
            self.worker = w

    app = VortexMiddleware(_asgi_app(worker.infer), _Service(worker))
    _benchmark(benchmark, f"serving.http_request.{model_name}", _asgi_loop(app))
    assert worker.segment.records >= CALLS
