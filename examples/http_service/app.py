"""A FastAPI app serving the digits model through Vortex, for ``uvicorn --workers N``.

Run (see README.md)::

    VORTEX_HOME=/tmp/digits-home uvicorn app:app --app-dir examples/http_service --workers 4

Every worker process serves from its model slot and records into its own shared-memory
segment; one of them (or a ``vortex control --spec app:SPEC`` sidecar) holds the home's
control plane: detector, background training, registry. Nothing is downloaded: the digits
are scikit-learn's bundled copy.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from vortex import BackgroundTrainingConfig, RuntimeDetectorConfig
from vortex.dashboard import dashboard_app
from vortex.serving import (
    ServiceSpec,
    VortexMiddleware,
    VortexService,
    lifespan,
    vortex_app,
)

# Several workers per machine are the parallelism: one intra-op thread each, and the model called
# from the event loop's thread (an `async def` route), the thread this setting reaches. A plain
# `def` route runs in Starlette's thread pool, whose threads torch's setting does not reach
# (docs/SERVING.md, "Torch threads in a serving worker").
torch.set_num_threads(1)

HOME = os.environ.get("VORTEX_HOME", ".vortex-http")
MIN_SAMPLES = int(os.environ.get("VORTEX_MIN_SAMPLES", "500"))
INITIAL_EPOCHS = int(os.environ.get("VORTEX_INITIAL_EPOCHS", "15"))
TRAIN = os.environ.get("VORTEX_TRAIN", "1") == "1"  # 0: collect feedback, never train
# the newest samples kept for training (older ones make room)
BUFFER_CAPACITY = int(os.environ.get("VORTEX_BUFFER_CAPACITY", "10000"))
FACTORY_KWARGS = {"in_features": 64, "hidden": 64, "out_features": 10, "seed": 0}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def initial_model():
    """The model served before the registry has a version: the MLP trained on half the digits
    (seeded: every process builds the same weights)."""
    from vortex.training.models import mlp

    torch.manual_seed(0)
    x, y = digits()
    model = mlp(**FACTORY_KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[::2]), torch.from_numpy(y[::2])
    for _ in range(INITIAL_EPOCHS):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def configure(orch) -> None:
    """The control plane's slow parts: the detector over every worker's requests and
    background training from their feedback."""
    orch.with_runtime_detector(RuntimeDetectorConfig(monitor_interval_ms=500, window_size=500))
    orch.with_background_trainer(BackgroundTrainingConfig(
        enabled=TRAIN, min_samples_for_training=MIN_SAMPLES, training_interval_secs=3600, num_epochs=5,
        batch_size=64, learning_rate=3e-3, buffer_capacity=BUFFER_CAPACITY))


SPEC = ServiceSpec(home=HOME, model_factory="vortex.training.models:mlp", feature_dim=64, n_classes=10,
                   initial_model=initial_model, configure=configure,
                   tunables=os.environ.get("VORTEX_TUNABLES"), factory_kwargs=FACTORY_KWARGS)

service = VortexService(SPEC, control=os.environ.get("VORTEX_CONTROL", "standby"))
app = FastAPI(title="digits over Vortex", lifespan=lifespan(service))
app.add_middleware(VortexMiddleware, service=service)


class Digit(BaseModel):
    features: list[float]


@app.post("/predict")
async def predict(digit: Digit) -> dict:
    try:
        p = service.running.infer(np.asarray(digit.features, dtype=np.float32))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"request_id": p.request_id, "class": p.output, "confidence": p.confidence,
            "model_version": p.model_version}


# Vortex's routes after the app's own (Starlette tries routes in order: mounted first, /vortex
# would be tried, and missed, before every prediction). The live dashboard under /vortex/ui
# when a token is set: every worker must hold the same one (its actions, approve or swap, are
# refused without it; its pages show the home's state, so put the service's own
# authentication in front of /vortex in a public deployment).
DASHBOARD_TOKEN = os.environ.get("VORTEX_DASHBOARD_TOKEN")
app.mount("/vortex", vortex_app(service, mounts={"/ui": dashboard_app(HOME, token=DASHBOARD_TOKEN)}
                                if DASHBOARD_TOKEN else None))
