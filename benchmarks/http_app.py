"""The FastAPI app that benchmarks/bench_http.py serves under ``uvicorn --workers 2``.

One app, one model (an MLP for 8x8 digits: 64 features, 10 classes), ``POST /predict`` with
``{"features": [64 numbers]}``. ``VORTEX_BENCH_VARIANT`` picks what wraps it:

* ``bare``: nothing;
* ``instrumentator``: prometheus-fastapi-instrumentator, as its README deploys it with several
  workers (``PROMETHEUS_MULTIPROC_DIR`` set by the harness, so its ``/metrics`` is right across
  the workers, as Vortex's is);
* ``vortex``: Vortex's ASGI middleware and routes (``vortex.serving``), the model served through
  the worker's ``infer`` (model slot, request id, feedback ring, shared-memory segment), every
  worker standing by for the control plane of ``VORTEX_BENCH_HOME`` (one of them holds it: the
  runtime detector over every worker's records, and background training).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from fastapi import FastAPI
from pydantic import BaseModel

from vortex.training.models import mlp

VARIANT = os.environ.get("VORTEX_BENCH_VARIANT", "bare")
FEATURES = 64
MODEL_KWARGS = {"in_features": FEATURES, "hidden": 128, "out_features": 10, "seed": 0}

torch.set_num_threads(1)  # two workers on two cores: one thread each
model = mlp(**MODEL_KWARGS).eval()


class Features(BaseModel):
    features: list[float]


if VARIANT in ("bare", "instrumentator"):
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: Features) -> dict:
        x = torch.from_numpy(np.asarray(body.features, dtype=np.float32))[None]  # as Vortex converts
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)[0]
        confidence, label = probs.max(dim=0)
        return {"label": int(label), "confidence": float(confidence)}

    if VARIANT == "instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app).expose(app)

elif VARIANT == "vortex":
    from vortex import BackgroundTrainingConfig
    from vortex.serving import (
        ServiceSpec,
        VortexMiddleware,
        VortexService,
        lifespan,
        vortex_app,
    )

    def configure(orch) -> None:
        # the control plane: the detector over every worker's records, and a training run as
        # soon as 64 labelled samples came in (bench_http's training phase sends them); none on
        # a schedule, so that the idle rounds are idle
        orch.with_runtime_detector()
        orch.with_background_trainer(BackgroundTrainingConfig(
            min_samples_for_training=64, training_interval_secs=3600, num_epochs=2, batch_size=32))

    SPEC = ServiceSpec(home=os.environ["VORTEX_BENCH_HOME"], model_factory="vortex.training.models:mlp",
                       feature_dim=FEATURES, n_classes=10, initial_model=lambda: model,
                       configure=configure, factory_kwargs=MODEL_KWARGS)
    # "never": the workers leave the control plane to a `vortex control` sidecar (or to nobody)
    service = VortexService(SPEC, control=os.environ.get("VORTEX_CONTROL", "standby"))
    app = FastAPI(lifespan=lifespan(service))
    app.add_middleware(VortexMiddleware, service=service)

    @app.post("/predict")
    async def predict(body: Features) -> dict:
        p = service.running.infer(np.asarray(body.features, dtype=np.float32))
        return {"label": p.output, "confidence": p.confidence, "request_id": p.request_id}

    # after the app's own routes: Starlette tries routes in order, and a Mount tried before
    # /predict costs every prediction ~7k instructions (scripts/request_path_cost.py)
    app.mount("/vortex", vortex_app(service))

else:
    raise ValueError(f"VORTEX_BENCH_VARIANT={VARIANT!r} must be 'bare', 'instrumentator' or 'vortex'")


if VARIANT == "vortex" and os.environ.get("VORTEX_BENCH_PUMP_STATS"):
    # Measurement only (VORTEX_BENCH_PUMP_STATS=prefix): how long each of the control plane's
    # steps takes, wall and CPU time of the thread that runs it, and how many records a pump
    # fed; written to prefix.<pid>.json after every publish (the workers end with os._exit).
    import json
    import time

    from vortex.serving.control import ControlPlane

    _PASSES: dict[str, list[tuple[float, float, int]]] = {"pump": [], "commit": [], "publish": []}

    def _timed(name: str):
        method = getattr(ControlPlane, name)

        def run(self, *args, **kwargs):
            w, c = time.perf_counter(), time.thread_time()
            records = self.counts["records"]
            out = method(self, *args, **kwargs)
            _PASSES[name].append((time.perf_counter() - w, time.thread_time() - c,
                                  self.counts["records"] - records))
            if name == "publish":
                with open(f"{os.environ['VORTEX_BENCH_PUMP_STATS']}.{os.getpid()}.json", "w") as f:
                    json.dump(_PASSES, f)
            return out
        return run

    for _name in _PASSES:
        setattr(ControlPlane, _name, _timed(_name))

