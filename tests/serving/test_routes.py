"""The /vortex routes and the middleware, in process (httpx over ASGI): every bad input gets a
4xx with a clear message and the worker keeps serving; request ids in and out; 5xx recorded."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import numpy as np
import pytest

from vortex.serving.asgi import MAX_BODY_BYTES
from vortex.serving.metrics import fleet_exposition
from vortex.shm import FleetReader


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def served(example_app):
    example_app.service.start()
    try:
        yield example_app
    finally:
        example_app.service.stop()


async def _predict(client, x, request_id=None):
    headers = {"x-request-id": request_id} if request_id else {}
    r = await client.post("/predict", json={"features": x.tolist()}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def _client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_request_id_minted_echoed_and_taken_by_feedback(served):
    x, y = served.digits()

    async def go():
        async with _client(served.app) as c:
            minted = await _predict(c, x[0])
            given = await _predict(c, x[1], request_id="client-chosen-42")
            unusable = await _predict(c, x[2], request_id="x" * 300)  # too long: replaced
            r = await c.post("/vortex/feedback", json={"request_id": minted.headers["x-request-id"],
                                                       "label": int(y[0])})
            r2 = await c.post("/vortex/feedback", json={"request_id": "client-chosen-42", "label": int(y[1])})
            return minted, given, unusable, r, r2

    minted, given, unusable, r, r2 = run(go())
    assert len(unusable.headers["x-request-id"]) == 32 == len(unusable.json()["request_id"])
    assert len(minted.headers["x-request-id"]) == 32 and minted.json()["request_id"] == minted.headers["x-request-id"]
    assert given.headers["x-request-id"] == "client-chosen-42" == given.json()["request_id"]
    assert r.status_code == 200 and r2.status_code == 200
    assert 0.0 <= r.json()["error"] <= 1.0
    seg = served.service.running.segment
    assert seg.records == 3 and seg.samples == 2  # the middleware recorded every request


BAD = [
    ("unknown id", {"request_id": "never-issued", "label": 1}, None, 404, "unknown"),
    ("label a string", {"request_id": "{rid}", "label": "two"}, None, 422, "label"),
    ("label a fraction", {"request_id": "{rid}", "label": 1.5}, None, 422, "label"),
    ("label a bool", {"request_id": "{rid}", "label": True}, None, 422, "label"),
    ("label out of range", {"request_id": "{rid}", "label": 10}, None, 422, "label"),
    ("label null", {"request_id": "{rid}", "label": None}, None, 422, "label"),
    ("label a list", {"request_id": "{rid}", "label": [1]}, None, 422, "label"),
    ("request id a number", {"request_id": 7, "label": 1}, None, 422, "request_id"),
    ("request id empty", {"request_id": "", "label": 1}, None, 422, "request_id"),
    ("request id huge", {"request_id": "x" * 5000, "label": 1}, None, 422, "request_id"),
    ("missing label", {"request_id": "{rid}"}, None, 422, "missing field 'label'"),
    ("missing request id", {"label": 1}, None, 422, "missing field 'request_id'"),
    ("extra field", {"request_id": "{rid}", "label": 1, "x": 2}, None, 422, "unknown fields"),
    ("episode a string", {"request_id": "{rid}", "label": 1, "episode": "e"}, None, 422, "episode"),
    ("garbage JSON", None, b"{not json", 400, "not JSON"),
    ("JSON not an object", None, b"[1, 2]", 400, "JSON object"),
    ("invalid UTF-8", None, b"\xff\xfe{", 400, "not JSON"),
    ("oversized body", None, b'{"request_id": "' + b"a" * MAX_BODY_BYTES + b'", "label": 1}', 413, "too large"),
]


@pytest.mark.parametrize("payload,raw,status,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_feedback_is_a_clear_4xx_and_the_worker_keeps_serving(served, payload, raw, status, words):
    x, y = served.digits()

    async def go():
        async with _client(served.app) as c:
            rid = (await _predict(c, x[3])).json()["request_id"]
            if raw is not None:
                r = await c.post("/vortex/feedback", content=raw, headers={"content-type": "application/json"})
            else:
                body = json.loads(json.dumps(payload).replace("{rid}", rid))
                r = await c.post("/vortex/feedback", json=body)
            after = await c.post("/vortex/feedback", json={"request_id": rid, "label": int(y[3])})
            again = await _predict(c, x[4])
            return r, after, again

    r, after, again = run(go())
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()
    assert after.status_code == 200  # a refused feedback leaves the request answerable
    assert again.status_code == 200


def test_expired_request_is_refused_as_expired(home):
    import time

    from vortex.serving import ServiceSpec, VortexService, vortex_app

    spec = ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=4,
                       n_classes=3, factory_kwargs={"in_features": 4, "out_features": 3},
                       feedback_ttl_secs=0.05)
    service = VortexService(spec, control="never")
    service.start()
    try:
        p = service.running.infer(np.ones(4, np.float32))
        time.sleep(0.2)

        async def go():
            async with _client(vortex_app(service)) as c:
                return await c.post("/feedback", json={"request_id": p.request_id, "label": 1})

        r = run(go())
        assert r.status_code == 404 and "expired" in r.json()["error"]
    finally:
        service.stop()


def test_wrong_content_type_is_415(served):
    async def go():
        async with _client(served.app) as c:
            return await c.post("/vortex/feedback", content=b"request_id=1", headers={"content-type": "text/plain"})

    r = run(go())
    assert r.status_code == 415 and "application/json" in r.json()["error"]


def test_a_5xx_is_recorded_as_a_failed_request_not_as_a_prediction_error(served, home):
    @served.app.get("/boom")
    def boom():
        raise RuntimeError("handler failed")

    async def go():
        transport = httpx.ASGITransport(app=served.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.get("/boom", headers={"x-request-id": "failing-1"})

    r = run(go())
    assert r.status_code == 500
    with FleetReader(home, resume=False) as fleet:
        records = fleet.read_new().all_metrics()
        totals = fleet.totals()
    assert len(records) == 1 and records.confidence[0] == 0.0 and not math.isnan(records.latency_ms[0])
    # the failure has its own total (vortex_request_errors_total); the prediction-error fields,
    # which feedback alone can fill, stay empty
    assert totals.failed == 1 and totals.error_count == 0 and math.isnan(records.error[0])
    assert b"vortex_request_errors_total 1.0" in fleet_exposition(str(home))


def test_a_request_is_timed_until_its_response_is_complete_not_until_the_app_returns(served, home):
    """What the app does after its last byte (a background task) is not the client's wait."""
    from starlette.background import BackgroundTask
    from starlette.responses import JSONResponse

    x, _ = served.digits()

    @served.app.post("/predict-then-work")
    def predict_then_work():
        prediction = served.service.worker.infer(x[0])
        return JSONResponse({"confidence": prediction.confidence},
                            background=BackgroundTask(asyncio.sleep, 1.0))

    async def go():
        async with _client(served.app) as c:
            start = asyncio.get_running_loop().time()
            r = await c.post("/predict-then-work")
            return r, asyncio.get_running_loop().time() - start

    r, elapsed = run(go())
    assert r.status_code == 200 and elapsed >= 1.0  # the test client waits for the app to return
    with FleetReader(home, resume=False) as fleet:
        records = fleet.read_new().all_metrics()
    assert len(records) == 1 and records.latency_ms[0] < 1000.0, records.latency_ms


def test_status_and_metrics_routes(served):
    x, _ = served.digits()

    async def go():
        async with _client(served.app) as c:
            for i in range(5):
                await _predict(c, x[i])
            return await c.get("/vortex/status"), await c.get("/vortex/metrics")

    status, metrics = run(go())
    assert status.status_code == 200 and status.json()["worker"]["records"] == 5
    text = metrics.text
    assert 'vortex_request_duration_seconds_count 5.0' in text
    assert 'vortex_request_confidence_bucket{le="+Inf"} 5.0' in text


def test_works_in_a_plain_starlette_app(home):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from vortex.serving import (
        ServiceSpec,
        VortexMiddleware,
        VortexService,
        lifespan,
        vortex_app,
    )

    spec = ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=4,
                       n_classes=3, factory_kwargs={"in_features": 4, "out_features": 3})
    service = VortexService(spec, control="never")

    async def predict(request):
        body = await request.json()
        p = service.running.infer(np.asarray(body["x"], np.float32))
        return JSONResponse({"request_id": p.request_id, "class": p.output})

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Mount("/vortex", vortex_app(service))],
                    lifespan=lifespan(service))
    app.add_middleware(VortexMiddleware, service=service)
    service.start()
    try:
        async def go():
            async with _client(app) as c:
                p = await c.post("/predict", json={"x": [0.1, 0.2, 0.3, 0.4]}, headers={"x-request-id": "s-1"})
                f = await c.post("/vortex/feedback", json={"request_id": "s-1", "label": 2})
                return p, f

        p, f = run(go())
        assert p.status_code == 200 and p.headers["x-request-id"] == "s-1"
        assert f.status_code == 200 and f.json()["request_id"] == "s-1"
    finally:
        service.stop()


def test_events_stream_reports_what_the_control_plane_publishes_once(served, home, monkeypatch):
    from vortex.serving import asgi

    monkeypatch.setattr(asgi, "EVENTS_POLL_SECS", 0.01)
    weakness = {"type": "confidence_drop", "timestamp": 1.0, "severity": 0.5}
    proposal = {"id": "p1", "status": "pending_review"}

    def publish(weaknesses, proposals):
        (home / "control.json").write_text(json.dumps({"weaknesses": weaknesses, "proposals": proposals}))

    async def go(replay):
        passes = 0

        async def disconnected():
            nonlocal passes
            passes += 1
            if passes == 2:  # the control plane publishes news between two polls
                publish([weakness, {**weakness, "timestamp": 2.0}], [{**proposal, "status": "applied"}])
            return passes > 3

        return [chunk async for chunk in asgi._event_stream(served.service, replay, disconnected)]

    publish([weakness], [proposal])
    chunks = run(go(replay=False))
    events = [(c.split(b"\n")[0], json.loads(c.split(b"\n")[1][6:])) for c in chunks[1:]]
    assert chunks[0].startswith(b":")  # a comment first: the stream is open
    assert events == [(b"event: weakness", {**weakness, "timestamp": 2.0}),
                      (b"event: proposal", {**proposal, "status": "applied"})]
    publish([weakness], [proposal])
    replayed = run(go(replay=True))
    assert [c.split(b"\n")[0] for c in replayed[1:]] == [b"event: weakness", b"event: proposal",
                                                       b"event: weakness", b"event: proposal"]


def test_minted_request_ids_are_unique_random_hex_and_a_forked_child_mints_its_own():
    """Ids come from a pool of os.urandom bytes (256 ids a refill): a forked worker (gunicorn
    forks its workers) must not mint the ids its parent mints next, nor ever repeat one."""
    import os
    import re

    from vortex.serving.worker import mint_request_id

    before = [mint_request_id() for _ in range(100)]  # the pool part-used at the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, "\n".join(mint_request_id() for _ in range(600)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child = f.read().decode().split("\n")
    os.waitpid(pid, 0)
    parent = [mint_request_id() for _ in range(600)]  # across two refills of its own
    every = before + parent + child
    assert len(child) == 600 and all(re.fullmatch("[0-9a-f]{32}", i) for i in every)
    assert len(set(every)) == len(every)
