"""The FastAPI app that benchmarks/bench_http.py serves under ``uvicorn --workers 2``.

One app, one model (an MLP for 8x8 digits: 64 features, 10 classes), ``POST /predict`` with
``{"features": [64 numbers]}``. ``VORTEX_BENCH_VARIANT`` picks what wraps it:

* ``bare``: nothing;
* ``instrumentator``: prometheus-fastapi-instrumentator, as its README deploys it with several
  workers (``PROMETHEUS_MULTIPROC_DIR`` set by the harness, so its ``/metrics`` is right across
  the workers, as Vortex's is);
* ``vortex``: Vortex's ASGI middleware and router (``vortex.serving``).
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from vortex.training.models import mlp

VARIANT = os.environ.get("VORTEX_BENCH_VARIANT", "bare")
FEATURES = 64

torch.set_num_threads(1)  # two workers on two cores: one thread each
model = mlp(in_features=FEATURES, hidden=128, out_features=10, seed=0).eval()


class Features(BaseModel):
    features: list[float]


app = FastAPI()


@app.post("/predict")
async def predict(body: Features) -> dict:
    with torch.inference_mode():
        probs = torch.softmax(model(torch.tensor([body.features])), dim=1)[0]
    confidence, label = probs.max(dim=0)
    return {"label": int(label), "confidence": float(confidence)}


if VARIANT == "instrumentator":
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator().instrument(app).expose(app)
elif VARIANT != "bare":
    raise ValueError(f"VORTEX_BENCH_VARIANT={VARIANT!r} must be 'bare', 'instrumentator' or 'vortex'")
