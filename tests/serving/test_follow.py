"""How a serving worker follows its registry's active version (the home's own here; the shared
one on S3 in test_fleet_registry.py): a version it cannot load (a byte of its weights file
flipped on disk after the swap was written) is refused, said once, and the version serving
keeps serving; the next good version is followed at once.
"""

from __future__ import annotations

import logging

import pytest

from vortex.home import HomeLayout
from vortex.serving import ServiceSpec, ServingWorker
from vortex.training.models import mlp
from vortex.training.registry import ModelRegistry

DIM = 4


def test_a_damaged_version_is_refused_once_and_the_served_one_keeps_serving(home, caplog):
    spec = ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=DIM, n_classes=3,
                       factory_kwargs={"in_features": DIM, "out_features": 3})
    registry = ModelRegistry(HomeLayout(str(home)).models)
    v1 = registry.register(mlp(DIM, out_features=3, seed=1))
    registry.set_active(v1)
    worker = ServingWorker(spec, follow_interval=3600)  # follows only when told to
    try:
        assert worker.status()["model_version"] == v1
        v2 = registry.register(mlp(DIM, out_features=3, seed=2))
        registry.set_active(v2)
        with open(registry.weights_path(v2), "r+b") as f:  # damaged after the swap was written
            f.seek(100)
            byte = f.read(1)[0]
            f.seek(100)
            f.write(bytes([byte ^ 0x10]))
        with caplog.at_level(logging.ERROR, logger="vortex.serving.worker"):
            for _ in range(3):
                assert worker.follow_once() == v1
        status = worker.status()
        assert status["model_version"] == v1 and worker.orchestrator.infer([0.0] * DIM).model_version == v1
        assert f"model version {v2} refused, still serving version {v1}" in status["follow_error"]
        assert "sha256" in status["follow_error"] and registry.weights_path(v2) in status["follow_error"]
        assert status["follow_errors"] == 1  # tried once: the next try after REFUSED_RETRY_SECS
        assert [r.getMessage() for r in caplog.records].count(status["follow_error"]) == 1
        v3 = registry.register(mlp(DIM, out_features=3, seed=3))
        registry.set_active(v3)  # another version: followed at once, the refusal forgotten
        assert worker.follow_once() == v3 and worker.status()["follow_error"] is None
    finally:
        worker.stop()


def test_a_worker_does_not_start_on_an_active_version_it_cannot_load(home):
    spec = ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=DIM, n_classes=3,
                       factory_kwargs={"in_features": DIM, "out_features": 3})
    registry = ModelRegistry(HomeLayout(str(home)).models)
    registry.set_active(registry.register(mlp(DIM, out_features=5)), verify=True)  # another architecture
    with pytest.raises(RuntimeError, match="size mismatch"):
        ServingWorker(spec)  # rather than the untrained initial model in its place
