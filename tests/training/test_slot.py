"""ModelSlot: lock-free reads, prepared swaps, in-flight requests keep their model."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from vortex.errors import ModelSwapError
from vortex.training.models import mlp
from vortex.training.slot import ModelSlot


class _Gate(torch.nn.Module):
    """A model whose forward blocks until released, to hold a request in flight."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, x):
        if not torch.is_inference_mode_enabled() or x.shape[0] != 1 or x.sum() != 0:
            self.entered.set()
            assert self.release.wait(10)
        return torch.full((x.shape[0], 1), self.value)


def test_swap_prepares_and_replaces():
    slot = ModelSlot(mlp(4, 8, 2, seed=0), version=1, example=torch.zeros(1, 4))
    assert slot.version == 1 and not slot.model.training
    new = mlp(4, 8, 2, seed=1).train()
    old = slot.swap(new, 2)
    assert old.version == 1 and slot.get() == (2, new) and not new.training and slot.swaps == 1


def test_failed_warmup_keeps_old_model():
    slot = ModelSlot(mlp(4, 8, 2, seed=0), version=1, example=torch.zeros(1, 4))
    with pytest.raises(ModelSwapError, match="warm-up"):
        slot.swap(mlp(5, 8, 2), 2)  # wrong input width
    assert slot.version == 1 and slot.swaps == 0


def test_request_in_flight_finishes_on_its_model():
    first = _Gate(1.0)
    slot = ModelSlot(first, version=1, example=torch.zeros(1, 3))
    out = {}

    def request():
        version, model = slot.get()
        out["version"], out["y"] = version, model(torch.ones(2, 3))

    t = threading.Thread(target=request)
    t.start()
    assert first.entered.wait(10)
    second = _Gate(2.0)
    slot.swap(second, 2)  # does not wait for the running request
    assert slot.get().version == 2
    first.release.set()
    t.join(10)
    assert out["version"] == 1 and torch.all(out["y"] == 1.0)


def test_hammer_swaps_while_reading():
    models = [mlp(4, 8, 2, seed=i) for i in range(4)]
    slot = ModelSlot(models[0], version=0, example=torch.zeros(1, 4))
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()

    def reader():
        x = torch.randn(3, 4)
        try:
            while not stop.is_set():
                version, model = slot.get()
                assert model is models[version]
                with torch.inference_mode():
                    assert model(x).shape == (3, 2)
                seen.add(version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(200):
        slot.swap(models[(i + 1) % 4], (i + 1) % 4, prepared=True)
        stop.wait(0.001)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and slot.swaps == 200 and len(seen) >= 2


_WARM_IN_A_THREAD = r"""
import sys, threading, torch
torch.set_num_threads(1)  # as a server with several worker processes sets it
from vortex.training.models import mlp
from vortex.training.slot import prepare_model

def warm():
    sys.stdin.readline()
    model = mlp(64, 128, 10, seed=0)
    if sys.argv[1] == "prepare_model":
        prepare_model(model, torch.zeros(1, 64))
    else:  # the same forward pass, as a thread runs it without prepare_model
        with torch.inference_mode():
            model(torch.zeros(1, 64))
    print("warmed", flush=True)
    sys.stdin.readline()

thread = threading.Thread(target=warm)
thread.start()
print("ready", flush=True)
thread.join()
"""


def _threads_added_by_a_warm_up(how: str) -> int:
    """Threads a process gains (read from /proc) when a thread it started later than
    ``torch.set_num_threads(1)`` warms a model up ``how``.
    """
    with subprocess.Popen([sys.executable, "-c", _WARM_IN_A_THREAD, how], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout.readline() == "ready\n"
            before = len(os.listdir(f"/proc/{proc.pid}/task"))
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "warmed\n"
            after = len(os.listdir(f"/proc/{proc.pid}/task"))
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(30) == 0
        finally:
            proc.kill()
    return after - before


def test_a_warm_up_in_another_thread_keeps_the_apps_thread_count():
    """A swap thread warms its model up on the app's one intra-op thread: no OpenMP team of
    its own (whose threads spin after each matrix product, on the cores that serve).
    """
    if _threads_added_by_a_warm_up("forward") == 0:
        pytest.skip("a plain forward pass in a new thread starts no OpenMP team here (one core, "
                    "or a torch that hands its thread count on): nothing to tell apart")
    assert _threads_added_by_a_warm_up("prepare_model") == 0
