"""Orchestrator request-path benchmarks: what ``infer`` and ``feedback`` add around a model call.

Two models, one group each: a small MLP (``vortex.training.models.mlp(64, 64, 10)``), and a
module returning constant logits, whose own call costs next to nothing: on this shared,
noisy machine the MLP's call varies by more than the overhead being measured, the constant
model's does not. Entries, side by side in one run, all making exactly the same model call
(``infer``'s own: the inference-mode guard entered directly, the input as an ``x[None]`` view
of the NumPy array), so that what differs is only what each does around it:

* ``bare``: that call alone;
* ``vortex``: ``Orchestrator.infer`` with the runtime detector, the performance tracker and
  sample capture (pending-feedback table; background trainer attached so ``feedback`` pushes
  into the SampleBuffer) enabled;
* ``prometheus_river``: what a user would do instead: the same call, softmax, a
  prometheus_client Histogram for latency and one for confidence, a Gauge for the last
  confidence and river's ``drift.ADWIN`` on confidence.

Overhead per call = entry - bare (fastest rounds): the bookkeeping alone. The Vortex entry
prints its overhead, the peer's and their ratio (``overhead_us``, ``peer_overhead_us``,
``peer_overhead_x``). (``bare`` used to be the slower call a user typically writes,
``torch.inference_mode()`` and ``unsqueeze``, which hid 1.5-2 us of Vortex's bookkeeping.) Group ``feedback (per call)`` times ``Orchestrator.feedback`` against the
peer's equivalent (error histogram, ADWIN on the error, the sample appended to a deque).

Run: ``PYTHONPATH=$PWD/src pytest benchmarks/bench_orchestrator.py --benchmark-only``.
"""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, Gauge, Histogram
from river import drift

from vortex import BackgroundTrainingConfig, Orchestrator, RuntimeDetectorConfig
from vortex.training.models import mlp

CALLS = 2000
DIM, CLASSES = 64, 10
FACTORY_KW = {"in_features": DIM, "hidden": 64, "out_features": CLASSES, "seed": 0}
INPUTS = list(np.random.default_rng(0).normal(size=(CALLS, DIM)).astype(np.float32))
LABELS = [int(v) for v in np.random.default_rng(1).integers(0, CLASSES, CALLS)]
_GUARD = torch._C._InferenceMode  # the guard infer enters (see Orchestrator.__init__)

# per-call minima of this run's infer entries, filled as the benchmarks run (same session); the
# overheads use minima because on a shared machine noise only ever adds time
_MINIMA: dict[str, float] = {}


class _ConstantLogits(torch.nn.Module):
    """The MLP's answer to the first input, returned for any input: a model call of almost
    no cost, so that only the bookkeeping around it differs between the entries."""

    def __init__(self) -> None:
        super().__init__()
        with torch.inference_mode():
            self.register_buffer("logits", mlp(**FACTORY_KW)(torch.from_numpy(INPUTS[0][None])).clone())

    def forward(self, x):
        return self.logits


KINDS = ["mlp", "constant"]


def _model(kind: str = "mlp") -> torch.nn.Module:
    return (mlp(**FACTORY_KW) if kind == "mlp" else _ConstantLogits()).eval()


def _group(benchmark, kind: str) -> None:
    benchmark.group = f"infer, {'mlp(64, 64, 10)' if kind == 'mlp' else 'constant-logits model'} (per call)"


def _orchestrator(tmp_path, kind: str = "mlp") -> Orchestrator:
    return (Orchestrator(_model(kind), "vortex.training.models:mlp", tmp_path / "home", feature_dim=DIM,
                         factory_kwargs=FACTORY_KW)
            .with_runtime_detector(RuntimeDetectorConfig(monitor_interval_ms=1000))
            .with_background_trainer(BackgroundTrainingConfig()))  # not started: no training runs


def _expected_classes(model) -> list[int]:
    with torch.inference_mode():
        return [int(model(torch.from_numpy(x[None])).argmax()) for x in INPUTS]


def _record(benchmark, key: tuple[str, str]) -> None:
    if benchmark.stats is not None and benchmark.stats.stats.rounds:
        _MINIMA[key] = benchmark.stats.stats.min / CALLS


class _Instrumented:
    """The same model served with prometheus_client + river: what a user would write."""

    def __init__(self, model) -> None:
        reg = CollectorRegistry()
        self.model = model
        self.latency = Histogram("latency_ms", "request latency", registry=reg,
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 50, 100, 500))
        self.confidence = Histogram("confidence", "max softmax probability", registry=reg,
                                    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0))
        self.last_confidence = Gauge("last_confidence", "confidence of the last request",
                                     registry=reg)
        self.error = Histogram("error", "prediction error", registry=reg,
                               buckets=(0.1, 0.25, 0.5, 0.75, 1.0))
        self.drift = drift.ADWIN()
        self.error_drift = drift.ADWIN()
        self.samples: collections.deque = collections.deque(maxlen=10_000)

    def infer(self, x):
        start = time.perf_counter()
        with _GUARD(True):
            probs = torch.softmax(self.model(torch.from_numpy(x[None])), 1)[0]
        confidence, cls = probs.max(0)
        confidence, cls = confidence.item(), cls.item()
        self.latency.observe((time.perf_counter() - start) * 1e3)
        self.confidence.observe(confidence)
        self.last_confidence.set(confidence)
        self.drift.update(confidence)
        return cls, confidence, probs

    def feedback(self, x, probs, label):
        error = 1.0 - float(probs[label])
        self.error.observe(error)
        self.error_drift.update(error)
        self.samples.append((x, label, error))
        return error


# -- infer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_infer_bare_model(benchmark, kind):
    _group(benchmark, kind)
    model = _model(kind)

    def run():
        out = None
        for x in INPUTS:
            with _GUARD(True):  # what infer does: torch.inference_mode() without its Python layers
                out = model(torch.from_numpy(x[None]))
        return out

    benchmark.extra_info["calls_per_round"] = CALLS
    out = benchmark(run)
    assert out.shape == (1, CLASSES)
    _record(benchmark, (kind, "bare"))


@pytest.mark.parametrize("kind", KINDS)
def test_infer_prometheus_river(benchmark, kind):
    _group(benchmark, kind)
    served = _Instrumented(_model(kind))

    def run():
        return [served.infer(x)[0] for x in INPUTS]

    benchmark.extra_info["calls_per_round"] = CALLS
    classes = benchmark(run)
    assert classes == _expected_classes(served.model)
    _record(benchmark, (kind, "peer"))
    if (kind, "bare") in _MINIMA:
        benchmark.extra_info["overhead_us"] = (_MINIMA[kind, "peer"] - _MINIMA[kind, "bare"]) * 1e6


@pytest.mark.parametrize("kind", KINDS)
def test_infer_vortex(benchmark, tmp_path, kind):
    _group(benchmark, kind)
    with _orchestrator(tmp_path, kind) as orch:
        infer = orch.infer

        def run():
            return [infer(x).output for x in INPUTS]

        benchmark.extra_info["calls_per_round"] = CALLS
        classes = benchmark(run)
        assert classes == _expected_classes(orch._slot.get()[1])
        assert orch.runtime_stats().total_samples % CALLS == 0
        assert orch.get_metrics()["modes"]["fast"]["count"] == orch.runtime_stats().total_samples
        _record(benchmark, (kind, "vortex"))
        if {(kind, "bare"), (kind, "peer")} <= _MINIMA.keys():
            mine = _MINIMA[kind, "vortex"] - _MINIMA[kind, "bare"]
            peer = _MINIMA[kind, "peer"] - _MINIMA[kind, "bare"]
            benchmark.extra_info["overhead_us"] = mine * 1e6
            benchmark.extra_info["peer_overhead_us"] = peer * 1e6
            benchmark.extra_info["peer_overhead_x"] = peer / mine if mine > 0 else float("inf")


# -- feedback ---------------------------------------------------------------------------------

@pytest.mark.benchmark(group="feedback (per call)")
def test_feedback_prometheus_river(benchmark):
    served = _Instrumented(_model())
    answered = [(x, served.infer(x)[2]) for x in INPUTS]

    def run():
        return [served.feedback(x, probs, y) for (x, probs), y in zip(answered, LABELS)]

    benchmark.extra_info["calls_per_round"] = CALLS
    errors = benchmark(run)
    assert all(0.0 <= e <= 1.0 for e in errors)


@pytest.mark.benchmark(group="feedback (per call)")
def test_feedback_vortex(benchmark, tmp_path):
    with _orchestrator(tmp_path) as orch:
        infer, feedback = orch.infer, orch.feedback

        def setup():
            return ([infer(x) for x in INPUTS],), {}

        def run(preds):
            return [feedback(p.request_id, y) for p, y in zip(preds, LABELS)]

        benchmark.extra_info["calls_per_round"] = CALLS
        errors = benchmark.pedantic(run, setup=setup, rounds=20, iterations=1)
        assert all(0.0 <= e <= 1.0 for e in errors)
        # every feedback became a training sample (the last round's are the newest ones)
        snap = orch.trainer.buffer.snapshot()
        assert len(snap) >= CALLS
        np.testing.assert_allclose(snap.error[-CALLS:], errors, rtol=1e-6)
        np.testing.assert_array_equal(snap.labels[-CALLS:], LABELS)
