"""A bad swap is rolled back in multi-worker mode: examples/http_service under a real
``uvicorn --workers 2``, every request and feedback over loopback HTTP.

The story is a labelling bug upstream: for a while every label sent back is the digit plus one.
Version 1 (the example's initial model, trained on half the digits) serves. The shifted labels,
then correct ones, reach the training threshold; the run learns the shift, validates better on
its held-out samples (mostly shifted) and is swapped in by training's automatic, watched swap,
in the control plane's process. The labels are correct again: version 2's live error on the
requests it answered is far worse than version 1's on the correct labels just before the swap,
so the post-swap watch, fed by the control plane's pump from the workers' shared memory, rolls
back: the registry's active version is 1 again, the serving log says why, and every worker
serves version 1 again.
"""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import numpy as np
import pytest
from serving.test_uvicorn import Server, digits  # noqa: F401  (digits: the fixture)

pytestmark = pytest.mark.slow

SHIFTED = 800  # feedback with the labelling bug (enough for the run to learn it and validate better)
CORRECT = 200  # then correct feedback: the old version's baseline (watch_requests, default 200)


def _control_samples(home) -> int:
    try:
        with open(os.path.join(home, "control.json")) as f:
            return json.load(f)["control"]["samples"]
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _wait(what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _traffic(server: Server, x, labels, indices, clients: int = 2, stop: threading.Event | None = None) -> list:
    """Predict and send feedback for ``x[i]`` with ``labels[i]``, ``i`` in ``indices`` (split
    among ``clients`` threads); the answers, or until ``stop`` is set."""
    answers: list[dict] = []
    errors: list[BaseException] = []

    def loop(k: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for i in indices[k::clients]:
                    if stop is not None and stop.is_set():
                        return
                    p = c.post("/predict", json={"features": x[i].tolist()})
                    assert p.status_code == 200, p.text
                    f = c.post("/vortex/feedback", json={"request_id": p.json()["request_id"],
                                                         "label": int(labels[i]), "episode": int(i)})
                    assert f.status_code == 200, f.text
                    answers.append(p.json())
        except (AssertionError, httpx.HTTPError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return answers


def test_a_bad_automatic_swap_is_rolled_back_and_every_worker_serves_the_good_version_again(home, digits):  # noqa: F811
    from vortex.training.registry import ModelRegistry

    x, y = digits
    shifted = (y + 1) % 10
    server = Server(home, VORTEX_MIN_SAMPLES=str(SHIFTED + CORRECT), VORTEX_INITIAL_EPOCHS="15")
    try:
        server.wait_ready()
        registry = ModelRegistry(home / "models")
        with httpx.Client(base_url=server.url, timeout=10) as c:
            _wait("every worker serving version 1", lambda: {
                s["worker"]["model_version"] for s in server.statuses(c, set(server.workers())).values()} == {1}, 60)
        order = np.random.default_rng(0).permutation(len(x))
        _traffic(server, x, shifted, order[:SHIFTED].tolist())
        # the control plane has read every shifted label before the correct ones arrive
        _wait("the control plane reading the shifted feedback", lambda: _control_samples(home) >= SHIFTED, 60)
        _traffic(server, x, y, order[SHIFTED:SHIFTED + CORRECT].tolist())
        _wait("the run's swap", lambda: registry.active_version == 2, 240)
        swap = registry.serving_log()[-1]
        assert swap["to_version"] == 2 and swap["reason"].startswith("auto:"), swap

        stop = threading.Event()
        fed: list = []

        def until_rolled_back() -> None:  # correct labels again, until the watch has judged
            rest = order[SHIFTED + CORRECT:].tolist()
            while not stop.is_set():
                fed.extend(_traffic(server, x, y, rest, stop=stop))

        feeder = threading.Thread(target=until_rolled_back, daemon=True)
        feeder.start()
        try:
            _wait("the rollback", lambda: registry.active_version == 1, 240)
        finally:
            stop.set()
            feeder.join(60)
        rollback = registry.serving_log()[-1]
        assert rollback["from_version"] == 2 and rollback["to_version"] == 1, rollback
        assert rollback["reason"].startswith("rollback: watch regression of version 2"), rollback
        assert any(a["model_version"] == 2 for a in fed), "no request was answered by version 2"
        with httpx.Client(base_url=server.url, timeout=10) as c:
            _wait("every worker serving version 1 again", lambda: {
                s["worker"]["model_version"] for s in server.statuses(c, set(server.workers())).values()} == {1}, 30)
    finally:
        server.stop()
