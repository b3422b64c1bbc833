"""The bad-input table: every public entry point and every ``vortex`` command, given bad values.

Each row names a call, the bad input, the error it must raise, a regex its message must match
(it names the value, or the file), and the state that must come out of it unchanged: the
detector's window, the buffer's rows, the registry's files, the pending request (still
answerable after a refused feedback), the home directory (never created by a refusal). The
CLI rows run ``vortex`` as a child process and check the exit status (2 for a bad argument,
1 for a bad state), that stderr is exactly one line, and the home's files before and after.

The property tests at the end give ``record_sample``, ``push`` and ``feedback`` arbitrary
values: each is either stored exactly or refused with ``ValueError``, changing nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import vortex
from vortex import (BackgroundTrainingConfig, FluxConfig, Orchestrator, RSIConfig,
                    RuntimeDetectorConfig)
from vortex.errors import (ConfigError, ConfigKeyError, ProposalNotFoundError, RegistryError,
                           SnapshotFormatError, VersionNotFoundError, VortexError)
from vortex.monitor import PerformanceTracker, RuntimeDetector
from vortex.rsi import RSIEngine
from vortex.training import FluxDynamics, SampleBuffer, Snapshot
from vortex.training.models import mlp
from vortex.training.registry import ModelRegistry
from vortex.training.slot import ModelSlot
from vortex.tunables import Tunables

from rsi_support import TINY_PYPROJECT  # tests/ is on sys.path (tests/conftest.py)

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src")
DIM = 4
CLASSES = 3
FACTORY = "vortex.training.models:mlp"
FACTORY_KWARGS = {"in_features": DIM, "hidden": 8, "out_features": CLASSES, "seed": 0}

# Values that are not real numbers, refused wherever a number is due.
NOT_NUMBERS = [None, "0.5", b"1", True, False, np.True_, 1j, [0.5], np.array([0.5, 0.5]), {},
               10 ** 400]


def _arrays(d: dict[str, np.ndarray]) -> tuple:
    """A comparable fingerprint of a dict of arrays (NaN-exact: compared as bytes)."""
    return tuple((k, np.asarray(v).dtype.str, np.asarray(v).tobytes()) for k, v in sorted(d.items()))


def _files(root: str) -> dict[str, str] | None:
    """Relative path -> sha256 of every file under ``root`` (None when it does not exist)."""
    if not os.path.lexists(root):
        return None
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, root)] = hashlib.sha256(fh.read()).hexdigest()
        out[os.path.relpath(dirpath, root) + "/"] = "dir"
    return out


# ------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class Target:
    """How to build a fresh object for a row, fingerprint its state, and check it still works."""

    build: Callable[[Any], Any]
    fingerprint: Callable[[Any], Any]
    still_works: Callable[[Any], None] = lambda obj: None


def _detector(tmp_path):
    det = RuntimeDetector(RuntimeDetectorConfig(window_size=60), memory_probe=lambda: 0.1)
    for i in range(15):
        det.record_sample(10.0 + i, 0.8)
    return SimpleNamespace(det=det, sample_id=det.record_request(5.0, 0.9))


def _detector_state(t):
    return len(t.det), t.det.total_samples, _arrays(t.det._window.snapshot())


def _detector_works(t):
    assert t.det.record_error(t.sample_id, 0.25) is True
    t.det.record_sample(1.0, 0.5)


def _tracker(tmp_path):
    tr = PerformanceTracker()
    tr.record("fast", 3.0, 0.9, seq=4)
    tr.record_outcome(4, True)
    return tr


def _buffer(tmp_path):
    buf = SampleBuffer(DIM, 16)
    buf.extend(np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM), [0, 1, 2],
               confidences=[0.5, 0.6, 0.7], errors=[0.1, np.nan, 0.3], episodes=[7, 7, 8])
    (tmp_path / "sub").mkdir()
    return SimpleNamespace(buf=buf, dir=str(tmp_path))


def _buffer_state(t):
    snap = t.buf.snapshot()
    return (len(t.buf), t.buf.next_seq, _arrays({f.name: getattr(snap, f.name) for f in fields(snap)}),
            sorted(os.listdir(t.dir)))


def _buffer_works(t):
    assert t.buf.push(np.ones(DIM, np.float32), 1) == 3


def _float_buffer(tmp_path):
    buf = SampleBuffer(DIM, 16, label_dtype="float32")
    buf.push(np.zeros(DIM, np.float32), 0.5)
    return SimpleNamespace(buf=buf, dir=str(tmp_path))


def _registry(tmp_path):
    reg = ModelRegistry(str(tmp_path / "models"))
    reg.set_active(reg.register(mlp(**FACTORY_KWARGS), {"trigger": "initial"}), "initial")
    return reg


def _registry_state(reg):
    return reg.list_versions(), reg.active_version, reg.serving_log(), _files(reg.root)


def _registry_works(reg):
    v = reg.register(mlp(**FACTORY_KWARGS).state_dict(), {"samples": 3})
    reg.set_active(v, "test")
    assert reg.active_version == v


def _slot(tmp_path):
    return ModelSlot(mlp(**FACTORY_KWARGS), 1, example=torch.zeros(1, DIM))


def _orchestrator(tmp_path, *, trainer: bool = False, rsi: bool = False):
    orch = Orchestrator(mlp(**FACTORY_KWARGS), FACTORY, tmp_path / "home", feature_dim=DIM,
                        factory_kwargs=FACTORY_KWARGS).with_runtime_detector()
    if trainer:
        orch.with_background_trainer(BackgroundTrainingConfig(min_samples_for_training=100,
                                                               buffer_capacity=100))
    if rsi:
        tree = tmp_path / "target"
        (tree / "tests").mkdir(parents=True)
        (tree / "pyproject.toml").write_text(TINY_PYPROJECT)
        (tree / "conf.toml").write_text("workers = 4\nstrict = true\n")
        orch.with_self_modification(tree)
    pred = orch.infer(np.linspace(0, 1, DIM, dtype=np.float32))
    return SimpleNamespace(orch=orch, rid=pred.request_id, pred=pred, home=str(tmp_path / "home"))


def _orchestrator_state(t):
    o = t.orch
    status = o.system_status()
    return (status.pending_feedback, status.performance, status.current_model_version,
            status.runtime["total_samples"], status.runtime["recent_prediction_error"],
            len(o.trainer.buffer) if o.trainer is not None else None,
            [p.id for p in o.get_proposals()] if o.rsi is not None else None)


def _orchestrator_works(t):
    """The request a refused feedback named is still pending: the right feedback is taken."""
    try:
        error = t.orch.feedback(t.rid, t.pred.output)
        assert error == pytest.approx(1.0 - t.pred.confidence)
        assert t.orch.system_status().pending_feedback == 0
        if t.orch.trainer is not None:
            assert len(t.orch.trainer.buffer) == 1
    finally:
        t.orch.close()


def _home_only(tmp_path):
    return str(tmp_path / "home")


TARGETS: dict[str, Target] = {
    "detector": Target(_detector, _detector_state, _detector_works),
    "tracker": Target(_tracker, lambda tr: tr.summary(),
                      lambda tr: tr.record("fast", 1.0, 0.5, seq=5)),
    "buffer": Target(_buffer, _buffer_state, _buffer_works),
    "float_buffer": Target(_float_buffer, _buffer_state, lambda t: t.buf.push(np.zeros(DIM), 2.5)),
    "registry": Target(_registry, _registry_state, _registry_works),
    "slot": Target(_slot, lambda s: (s.version, id(s.model), s.swaps),
                   lambda s: s.swap(mlp(**FACTORY_KWARGS), 2)),
    "orchestrator": Target(_orchestrator, _orchestrator_state, _orchestrator_works),
    "orchestrator+trainer": Target(lambda p: _orchestrator(p, trainer=True), _orchestrator_state,
                                   _orchestrator_works),
    "orchestrator+rsi": Target(lambda p: _orchestrator(p, rsi=True), _orchestrator_state,
                               _orchestrator_works),
    # constructions: nothing may be created where the refused object would have lived
    "home": Target(_home_only, _files),
    "none": Target(lambda p: None, lambda _: None),
}


@dataclass(frozen=True)
class Row:
    target: str
    what: str
    call: Callable[[Any], Any]
    error: type[BaseException] | tuple[type[BaseException], ...]
    match: str

    def __str__(self) -> str:
        return f"{self.target}:{self.what}"


def _esc(value: Any) -> str:
    return re.escape(repr(value))


ROWS: list[Row] = []


def row(target: str, what: str, call: Callable[[Any], Any], error: Any = ValueError,
        match: str = "") -> None:
    ROWS.append(Row(target, what, call, error, match))


# -- RuntimeDetector -------------------------------------------------------------------------
for bad in [-1.0, -1e-300, math.nan, math.inf, -math.inf, *NOT_NUMBERS]:
    row("detector", f"record_sample(latency_ms={bad!r})",
        lambda t, bad=bad: t.det.record_sample(bad, 0.5), ValueError, r"latency_ms=")
for bad in [-0.1, 1.0000001, 2, math.nan, math.inf, *NOT_NUMBERS]:
    row("detector", f"record_sample(confidence={bad!r})",
        lambda t, bad=bad: t.det.record_sample(1.0, bad), ValueError, r"confidence=")
for bad in [-0.5, math.inf, -math.inf, *NOT_NUMBERS]:
    row("detector", f"record_sample(prediction_error={bad!r})",
        lambda t, bad=bad: t.det.record_sample(1.0, 0.5, bad), ValueError, r"prediction_error=")
for bad in [-1.0, math.nan, "1", None, True]:
    row("detector", f"record_request(latency_ms={bad!r})",
        lambda t, bad=bad: t.det.record_request(bad, 0.5), ValueError, r"latency_ms=")
for bad in [-1, 2 ** 64, 2 ** 70, 1.5, "3", None, True, np.float64(1.0)]:
    row("detector", f"record_error(sample_id={bad!r})",
        lambda t, bad=bad: t.det.record_error(bad, 0.5), ValueError, r"sample_id=" + _esc(bad))
for bad in [math.nan, -0.1, math.inf, "0.5", None]:
    row("detector", f"record_error(prediction_error={bad!r})",
        lambda t, bad=bad: t.det.record_error(t.sample_id, bad), ValueError, r"prediction_error=")
for what, args, match in [
        ("lists", ([1.0], [0.5]), r"latencies_ms must be a NumPy array"),
        ("int dtype", (np.array([1]), np.array([0.5])), r"floating dtype, got int64"),
        ("complex dtype", (np.ones(2, complex), np.ones(2)), r"floating dtype, got complex128"),
        ("2-D", (np.ones((2, 2)), np.ones((2, 2))), r"1-D, got shape \(2, 2\)"),
        ("lengths differ", (np.ones(3), np.ones(2) / 2), r"same length, got 3, 2"),
        ("one NaN latency", (np.array([1.0, np.nan]), np.array([0.5, 0.5])), r"latencies_ms\[1\]=nan"),
        ("confidence 1.5", (np.ones(3), np.array([0.5, 0.5, 1.5])), r"confidences\[2\]=1\.5"),
        ("negative error", (np.ones(2), np.ones(2) / 2, np.array([0.1, -1.0])), r"prediction_errors\[1\]=-1\.0"),
        ("None", (None, None), r"must be a NumPy array")]:
    row("detector", f"record_batch({what})", lambda t, args=args: t.det.record_batch(*args),
        ValueError, match)
for bad in [-1, "3", None, 1.5]:
    row("detector", f"get_recent_weaknesses({bad!r})",
        lambda t, bad=bad: t.det.get_recent_weaknesses(bad), ValueError, r"n=" + _esc(bad))

# -- PerformanceTracker ------------------------------------------------------------------------
for bad in [None, "", 3, ["fast"]]:
    row("tracker", f"record(mode={bad!r})", lambda tr, bad=bad: tr.record(bad, 1.0, 0.5),
        ValueError, r"mode=" + _esc(bad))
for bad in [-1.0, math.nan, "1", None]:
    row("tracker", f"record(latency_ms={bad!r})", lambda tr, bad=bad: tr.record("fast", bad, 0.5),
        ValueError, r"latency_ms=")
for bad in [-1, 1.5, "2", True, None]:
    if bad is not None:  # record's default: no flux position
        row("tracker", f"record(seq={bad!r})", lambda tr, bad=bad: tr.record("fast", 1.0, 0.5, seq=bad),
            ValueError, r"seq=" + _esc(bad))
    row("tracker", f"record_outcome(seq={bad!r})", lambda tr, bad=bad: tr.record_outcome(bad, True),
        ValueError, r"seq=" + _esc(bad))
for bad in ["no", None, 1, 0.0, [True]]:
    row("tracker", f"record_outcome(correct={bad!r})", lambda tr, bad=bad: tr.record_outcome(5, bad),
        ValueError, r"correct=" + _esc(bad))

# -- SampleBuffer ------------------------------------------------------------------------------
X = np.zeros(DIM, np.float32)
for what, features, match in [
        ("too short", np.zeros(DIM - 1, np.float32), r"length 3, expected feature_dim=4"),
        ("NaN", np.array([0, np.nan, 0, 0], np.float32), r"features\[1\]=nan"),
        ("inf", [0.0, 0.0, np.inf, 0.0], r"features\[2\]=inf"),
        ("complex", np.zeros(DIM, complex), r"dtype complex128"),
        ("strings", ["a", "b", "c", "d"], r"dtype <U1"),
        ("objects", np.array([None] * DIM), r"dtype object"),
        ("2-D", np.zeros((1, DIM), np.float32), r"shape \(1, 4\)"),
        ("None", None, r"dtype object"),
        ("ragged", [[1.0], [1.0, 2.0]], r"features")]:
    row("buffer", f"push(features {what})", lambda t, f=features: t.buf.push(f, 1), ValueError, match)
for bad in [1.5, 2.0, "1", None, True, np.True_, 2 ** 63, -2 ** 63 - 1, np.uint64(2 ** 63 + 5),
            np.array([1, 2]), 1j]:
    row("buffer", f"push(label={bad!r})", lambda t, bad=bad: t.buf.push(X, bad), ValueError,
        r"label=" + _esc(bad))
for bad in [math.nan, math.inf, "0.5", None, True]:
    row("float_buffer", f"push(float label={bad!r})", lambda t, bad=bad: t.buf.push(X, bad),
        ValueError, r"label=")
for bad in [-0.1, 1.5, math.nan, "0.5", None, True]:
    row("buffer", f"push(confidence={bad!r})", lambda t, bad=bad: t.buf.push(X, 1, confidence=bad),
        ValueError, r"confidence=")
for bad in [-0.1, 1.5, math.inf, "x", None, False]:
    row("buffer", f"push(error={bad!r})", lambda t, bad=bad: t.buf.push(X, 1, error=bad),
        ValueError, r"error=")
for bad in [2 ** 70, -2 ** 63 - 1, 2 ** 63, 1.5, 1.0, "3", None, True, np.uint64(2 ** 64 - 1)]:
    row("buffer", f"push(episode={bad!r})", lambda t, bad=bad: t.buf.push(X, 1, episode=bad),
        ValueError, r"episode=" + _esc(bad))
for bad in [math.nan, math.inf, "now", True]:
    row("buffer", f"push(timestamp={bad!r})", lambda t, bad=bad: t.buf.push(X, 1, timestamp=bad),
        ValueError, r"timestamp=")
F2 = np.zeros((2, DIM), np.float32)
for what, kwargs, match in [
        ("uint64 label >= 2**63", dict(labels=np.array([1, 2 ** 63 + 5], np.uint64)),
         r"labels\[1\]=9223372036854775813 is outside int64"),
        ("float labels", dict(labels=[1.0, 1.5]), r"labels: dtype float64"),
        ("bool labels", dict(labels=np.array([True, False])), r"labels: dtype bool"),
        ("string labels", dict(labels=["1", "2"]), r"labels: dtype <U1"),
        ("labels too short", dict(labels=[1]), r"labels: length 1 does not match the 2 rows"),
        ("uint64 episode", dict(labels=[1, 2], episodes=np.array([0, 2 ** 64 - 1], np.uint64)),
         r"episodes\[1\]=18446744073709551615 is outside int64"),
        ("float episodes", dict(labels=[1, 2], episodes=[1.5, 2.0]), r"episodes: dtype float64"),
        ("confidence 2", dict(labels=[1, 2], confidences=[0.5, 2.0]), r"confidences\[1\]=2"),
        ("NaN confidence", dict(labels=[1, 2], confidences=[np.nan, 0.5]), r"confidences\[0\]=nan"),
        ("bool confidences", dict(labels=[1, 2], confidences=np.array([True, True])), r"confidences: dtype bool"),
        ("error -1", dict(labels=[1, 2], errors=[0.5, -1.0]), r"errors\[1\]=-1"),
        ("inf timestamp", dict(labels=[1, 2], timestamps=[1.0, np.inf]), r"timestamps\[1\]=inf"),
        ("complex timestamps", dict(labels=[1, 2], timestamps=np.ones(2, complex)), r"timestamps: dtype complex128")]:
    row("buffer", f"extend({what})", lambda t, kw=kwargs: t.buf.extend(F2, **kw), ValueError, match)
for what, features, match in [
        ("NaN row", np.array([[0, 0, 0, 0], [0, 0, np.nan, 0]], np.float32), r"features\[1, 2\]=nan"),
        ("wrong width", np.zeros((2, DIM + 1), np.float32), r"rows have 5 features"),
        ("1-D", np.zeros(DIM, np.float32), r"shape \(4,\)"),
        ("complex", np.zeros((2, DIM), complex), r"dtype complex128")]:
    row("buffer", f"extend(features {what})", lambda t, f=features: t.buf.extend(f, [1, 2]),
        ValueError, match)
for bad in [-1, 1.5, "2", None, True]:
    row("buffer", f"sample(n={bad!r})", lambda t, bad=bad: t.buf.sample(bad), ValueError,
        r"n=" + _esc(bad))
    if bad is not None:  # snapshot's default: every row
        row("buffer", f"snapshot(max_rows={bad!r})", lambda t, bad=bad: t.buf.snapshot(bad),
            ValueError, r"max_rows=" + _esc(bad))
row("buffer", "sample(rng=-1)", lambda t: t.buf.sample(2, rng=-1), ValueError, r"negative")
row("buffer", "save(into a missing directory)",
    lambda t: t.buf.save(os.path.join(t.dir, "missing", "b.arrow")), FileNotFoundError, r"missing")
row("buffer", "save(onto a directory)", lambda t: t.buf.save(os.path.join(t.dir, "sub")), OSError,
    r"[Ii]s a directory")
row("buffer", "load_into(a missing file)", lambda t: t.buf.load_into(os.path.join(t.dir, "no.arrow")),
    FileNotFoundError, r"no\.arrow")
row("buffer", "load_into(a directory)", lambda t: t.buf.load_into(t.dir), SnapshotFormatError,
    r"is a directory")


def _load_with(t, capacity):
    path = os.path.join(t.dir, "saved.arrow")
    t.buf.save(path)
    try:
        return SampleBuffer.load(path, capacity=capacity)
    finally:
        os.unlink(path)


for bad in [0, -5, True, 2.5, "10"]:
    row("buffer", f"load(capacity={bad!r})", lambda t, bad=bad: _load_with(t, bad), ValueError,
        r"capacity=" + _esc(bad))
for what, kwargs, match in [("feature_dim=0", dict(feature_dim=0), r"feature_dim=0"),
                            ("feature_dim=True", dict(feature_dim=True), r"feature_dim=True"),
                            ("feature_dim=2.0", dict(feature_dim=2.0), r"feature_dim=2\.0"),
                            ("capacity=-1", dict(feature_dim=2, capacity=-1), r"capacity=-1"),
                            ("label_dtype=float64", dict(feature_dim=2, label_dtype="float64"),
                             r"label_dtype='float64'")]:
    row("none", f"SampleBuffer({what})", lambda _, kw=kwargs: SampleBuffer(**kw), ValueError, match)

# -- Snapshot.read_ipc / FluxDynamics -----------------------------------------------------------
row("home", "Snapshot.read_ipc(missing file)", lambda home: Snapshot.read_ipc(os.path.join(home, "x.arrow")),
    FileNotFoundError, r"x\.arrow")
row("none", "Snapshot.read_ipc(a directory)", lambda _: Snapshot.read_ipc(os.path.dirname(SRC)),
    SnapshotFormatError, re.escape(os.path.dirname(SRC)))
row("none", "Snapshot.read_ipc(a text file)", lambda _: Snapshot.read_ipc(os.path.join(SRC, "vortex", "py.typed")),
    SnapshotFormatError, r"py\.typed")
FLUX_OK = {"seq": np.arange(3), "episode": np.zeros(3, np.int64), "error": np.full(3, 0.1)}
for what, change, match in [
        ("no seq column", {"seq": None}, r"needs a 'seq' column"),
        ("negative seq", {"seq": np.array([0, -1, 2])}, r"seq\[1\]=-1"),
        ("float seq", {"seq": np.array([0.0, 1.5, 2.0])}, r"seq: dtype float64"),
        ("string episodes", {"episode": np.array(["a", "b", "c"])}, r"episode: dtype <U1"),
        ("error 2", {"error": np.array([0.1, 2.0, 0.1])}, r"error\[1\]=2\.0"),
        ("error -inf", {"error": np.array([0.1, 0.1, -np.inf])}, r"error\[2\]=-inf"),
        ("lengths differ", {"error": np.full(2, 0.1)}, r"lengths differ: 3, 3, 2"),
        ("2-D seq", {"seq": np.arange(3)[None]}, r"seq: shape \(1, 3\)")]:
    cols = {k: v for k, v in {**FLUX_OK, **change}.items() if v is not None}
    row("none", f"FluxDynamics.compute({what})", lambda _, c=cols: FluxDynamics().compute(c),
        ValueError, match)
row("none", "FluxDynamics.compute(None)", lambda _: FluxDynamics().compute(None), ValueError,
    r"needs a 'seq' column; got NoneType")

# -- ModelRegistry / ModelSlot ------------------------------------------------------------------
for what, metadata, match in [
        ("samples='many'", {"samples": "many"}, r"metadata\['samples'\]='many'"),
        ("epochs=-1", {"epochs": -1}, r"metadata\['epochs'\]=-1"),
        ("parent=1.5", {"parent": 1.5}, r"metadata\['parent'\]=1\.5"),
        ("train_loss='low'", {"train_loss": "low"}, r"metadata\['train_loss'\]='low'"),
        ("val_accuracy=True", {"val_accuracy": True}, r"metadata\['val_accuracy'\]=True"),
        ("created_at=nan", {"created_at": math.nan}, r"metadata\['created_at'\]=nan"),
        ("trigger=5", {"trigger": 5}, r"metadata\['trigger'\]=5"),
        ("status='active'", {"status": "active"}, r"metadata\['status'\]='active'"),
        ("version=9", {"version": 9}, r"metadata\['version'\]"),
        ("unknown column", {"accuracy": 0.5}, r"accuracy"),
        ("not a mapping", [("samples", 3)], r"metadata=\[")]:
    row("registry", f"register(metadata {what})",
        lambda reg, m=metadata: reg.register(mlp(**FACTORY_KWARGS), m), ValueError, match)
for what, state in [("None", None), ("empty dict", {}), ("a string", "weights")]:
    row("registry", f"register(state {what})", lambda reg, s=state: reg.register(s),
        (ValueError, RegistryError), r"state")
for bad in [99, -1, 0]:
    row("registry", f"set_active({bad!r})", lambda reg, bad=bad: reg.set_active(bad),
        VersionNotFoundError, r"version " + str(bad))
    row("registry", f"load({bad!r})", lambda reg, bad=bad: reg.load(bad), VersionNotFoundError,
        r"version " + str(bad))
for what, model, match in [("None", None, r"model=None"), ("a string", "net", r"model='net'"),
                           ("a dict", {}, r"model=\{\}")]:
    row("slot", f"swap(model {what})", lambda s, m=model: s.swap(m, 2), ValueError, match)
    row("none", f"ModelSlot(model {what})", lambda _, m=model: ModelSlot(m), ValueError, match)
for bad in [-1, "2", 1.5, True]:
    row("slot", f"swap(version={bad!r})", lambda s, bad=bad: s.swap(mlp(**FACTORY_KWARGS), bad),
        ValueError, r"version=" + _esc(bad))

# -- Orchestrator: construction, infer, feedback, swap, approve ---------------------------------
ORCH_OK = dict(feature_dim=DIM)
for what, kwargs, match in [
        ("feature_dim=True", dict(feature_dim=True), r"feature_dim=True"),
        ("feature_dim=0", dict(feature_dim=0), r"feature_dim=0"),
        ("feature_dim=4.0", dict(feature_dim=4.0), r"feature_dim=4\.0"),
        ("feature_dim='4'", dict(feature_dim="4"), r"feature_dim='4'"),
        ("feature_dim=2**40", dict(feature_dim=2 ** 40), r"feature_dim=1099511627776"),
        ("task='ranking'", dict(task="ranking"), r"task='ranking'"),
        ("task=None", dict(task=None), r"task=None"),
        ("modes not a mapping", dict(modes=["fast"]), r"modes=\['fast'\]"),
        ("mode not callable", dict(modes={"slow": 3}), r"modes\['slow'\]=3"),
        ("mode name empty", dict(modes={"": len}), r"modes=''"),
        ("factory_kwargs not JSON", dict(factory_kwargs={"f": object()}), r"factory_kwargs="),
        ("factory_kwargs non-str key", dict(factory_kwargs={1: 2}), r"factory_kwargs=\{1: 2\}"),
        ("model_factory no colon", dict(model_factory="pkg.make"), r"model_factory='pkg\.make'"),
        ("model_factory callable", dict(model_factory=mlp), r"model_factory=<function mlp"),
        ("pending_capacity=0", dict(pending_capacity=0), r"pending_capacity=0"),
        ("pending_capacity=True", dict(pending_capacity=True), r"pending_capacity=True"),
        ("pending_ttl_secs=nan", dict(pending_ttl_secs=math.nan), r"pending_ttl_secs=nan"),
        ("pending_ttl_secs='1h'", dict(pending_ttl_secs="1h"), r"pending_ttl_secs='1h'"),
        ("cleanup_interval_secs=inf", dict(cleanup_interval_secs=math.inf), r"cleanup_interval_secs=inf"),
        ("cleanup_interval_secs=-1", dict(cleanup_interval_secs=-1), r"cleanup_interval_secs=-1"),
        ("model=None", dict(model=None), r"model=None"),
        ("home=5", dict(home=5), r"home=5"),
        ("home=b'bytes'", dict(home=b"x"), r"home=b'x'"),
        ("home=''", dict(home=""), r"home=''")]:
    def construct(home, kw=kwargs):
        args = {"model": mlp(**FACTORY_KWARGS), "home": home, **ORCH_OK, **kw}
        return Orchestrator(**args)
    row("home", f"Orchestrator({what})", construct, ConfigError, r"Orchestrator\." + match)
for what, x, match in [
        ("complex", np.zeros(DIM, complex), r"dtype complex128"),
        ("complex list", [1j, 0, 0, 0], r"dtype complex128"),
        ("complex scalar", 1j, r"dtype complex128"),
        ("complex tensor", torch.zeros(DIM, dtype=torch.complex64), r"complex64"),
        ("strings", ["1", "2", "3", "4"], r"dtype <U1"),
        ("object array", np.array([1, 2, 3, 4], dtype=object), r"dtype object"),
        ("None", None, r"dtype object"),
        ("dict", {"a": 1}, r"dtype object"),
        ("ragged", [[1.0, 2.0], [3.0]], r"cannot be read as an array|dtype object"),
        ("NaN", [0.0, np.nan, 0.0, 0.0], r"x\[1\]=nan"),
        ("inf", np.array([0, 0, 0, np.inf], np.float32), r"x\[3\]=inf"),
        ("float32 overflow", [0.0, 1e300, 0.0, 0.0], r"x\[1\]=1e\+300"),
        ("too short", np.zeros(DIM - 1, np.float32), r"x has 3 features; this model takes 4"),
        ("too long", list(range(DIM + 1)), r"x has 5 features"),
        ("empty", [], r"x has 0 features")]:
    for target in ("orchestrator", "orchestrator+trainer"):
        row(target, f"infer(x {what})", lambda t, x=x: t.orch.infer(x), ValueError, match)
for bad in ["slow", None, ["fast"], 3]:
    row("orchestrator", f"infer(mode={bad!r})", lambda t, bad=bad: t.orch.infer(X, mode=bad),
        ValueError, r"mode=" + _esc(bad))
for bad in [CLASSES, -1, 1.7, 0.5, math.nan, math.inf, None, "1", b"1", True, False, np.True_, 1j,
            np.array([1, 2]), np.array(1.5), 10 ** 30, [1], torch.tensor([1, 2])]:
    for target in ("orchestrator", "orchestrator+trainer"):
        row(target, f"feedback(label={bad!r})", lambda t, bad=bad: t.orch.feedback(t.rid, bad),
            ValueError, r"label=")
for bad in [1.5, "7", None, True, 2 ** 63, -2 ** 63 - 1]:
    for target in ("orchestrator", "orchestrator+trainer"):
        row(target, f"feedback(episode={bad!r})",
            lambda t, bad=bad: t.orch.feedback(t.rid, 1, episode=bad), ValueError,
            r"episode=" + _esc(bad))
for bad in ["abc", 1.0, None, True]:
    row("orchestrator", f"feedback(request_id={bad!r})", lambda t, bad=bad: t.orch.feedback(bad, 1),
        ValueError, r"request_id=" + _esc(bad))
for bad in [10 ** 6, -3, 0]:
    row("orchestrator", f"feedback(request_id={bad!r}, unknown)",
        lambda t, bad=bad: t.orch.feedback(bad, 1), vortex.errors.UnknownRequestError,
        r"request_id " + str(bad))
row("orchestrator", "swap_to_version without a trainer", lambda t: t.orch.swap_to_version(1),
    VortexError, r"with_background_trainer")
row("orchestrator", "approve_proposal without RSI", lambda t: t.orch.approve_proposal("x", "me"),
    VortexError, r"with_self_modification")
row("orchestrator", "enable_rsi(a dict)", lambda t: t.orch.enable_rsi({"enabled": True}),
    ConfigError, r"must be an RSIConfig")
for bad in [99, -1, 0]:
    row("orchestrator+trainer", f"swap_to_version({bad!r})",
        lambda t, bad=bad: t.orch.swap_to_version(bad), (VersionNotFoundError, ValueError),
        str(bad))
for bad in ["no-such-proposal", "../../etc/passwd", ""]:
    row("orchestrator+rsi", f"approve_proposal({bad!r})",
        lambda t, bad=bad: t.orch.approve_proposal(bad, "ops"), ProposalNotFoundError,
        re.escape(repr(bad)))


# -- RSIEngine construction and Tunables --------------------------------------------------------
def _engine(home, *, root="target", config=None, pyproject=TINY_PYPROJECT):
    base = os.path.dirname(home)
    tree = os.path.join(base, root)
    if root == "target":
        os.makedirs(tree, exist_ok=True)
        if pyproject is not None:
            with open(os.path.join(tree, "pyproject.toml"), "w") as fh:
                fh.write(pyproject)
    return RSIEngine(tree, home, config)


row("home", "RSIEngine(missing root)", lambda h: _engine(h, root="missing"), ConfigError, r"missing")
row("home", "RSIEngine(root without pyproject)", lambda h: _engine(h, pyproject=None), ConfigError,
    r"no pyproject\.toml")
row("home", "RSIEngine(pyproject not TOML)", lambda h: _engine(h, pyproject="[tool.vortex"),
    ConfigError, r"not valid TOML")
row("home", "RSIEngine(no [tool.vortex])", lambda h: _engine(h, pyproject="[project]\nname='x'\n"),
    ConfigError, r"missing \[tool\.vortex\]")
row("home", "RSIEngine(config=5)", lambda h: _engine(h, config=5), ConfigError, r"config=5")
row("home", "RSIEngine(config=a dict)", lambda h: _engine(h, config={"enabled": True}), ConfigError,
    r"config=\{'enabled': True\}")


for bad in [-1, math.nan, math.inf, "fast", None, True]:
    row("none", f"Tunables(check_interval={bad!r})",
        lambda _, bad=bad: Tunables(os.path.join(SRC, "x.toml"), check_interval=bad), ValueError,
        r"check_interval=" + _esc(bad))
row("home", "Tunables(missing file)", lambda h: Tunables(os.path.join(h, "t.toml")), ValueError,
    r"t\.toml: cannot load tunables")
row("none", "Tunables(not TOML)", lambda _: Tunables(os.path.join(SRC, "vortex", "cli.py")),
    ValueError, r"cli\.py: cannot load tunables")


# -- every *Config, every field --------------------------------------------------------------------
def _bad_values(cls: type, f: dataclasses.Field) -> list[Any]:
    """Values no field of that kind may take: wrong types (bools for numbers), NaN, out of range."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        return ["yes", 1, 0, None, np.True_]
    if isinstance(default, int):
        return [True, 1.5, float(default), "3", None, -1, math.nan, 10 ** 30]
    if isinstance(default, float):
        return [True, math.nan, math.inf, -math.inf, "1.0", None, -1.0, 1j, 10 ** 400]
    if isinstance(default, str):
        return ["ranking", 5, None, b"classification"]
    if isinstance(default, tuple):  # holdout_positions
        return [[3, 6], (0,), (10,), (True,), (3, 3), tuple(range(1, 10)), "369", None]
    if default is None:  # optional path or number
        return [5, b"dir", True] if f.name == "checkpoint_dir" else [0, -1.0, math.nan, "30", True]
    return [5, {"gamma": 0.5}, None, "flux"]  # a nested config


CONFIGS = (RuntimeDetectorConfig, FluxConfig, BackgroundTrainingConfig, RSIConfig)
for cls in CONFIGS:
    for f in fields(cls):
        for bad in _bad_values(cls, f):
            row("none", f"{cls.__name__}({f.name}={bad!r})",
                lambda _, cls=cls, name=f.name, bad=bad: cls(**{name: bad}), ConfigError,
                re.escape(f"{cls.__name__}.{f.name}={bad!r}"))
    first = fields(cls)[0].name
    typo = first[:-1] + first[-1].upper()
    row("none", f"{cls.__name__}({typo}=...)", lambda _, cls=cls, typo=typo: cls(**{typo: 1}),
        ConfigKeyError, rf"{cls.__name__} has no field '{typo}'; did you mean '{first}'\?")
    row("none", f"{cls.__name__}(nonsense=...)", lambda _, cls=cls: cls(nonsense=1), ConfigKeyError,
        rf"no field 'nonsense'; the fields are {fields(cls)[0].name}, ")
    row("none", f"{cls.__name__}.from_dict(typo)", lambda _, cls=cls, typo=typo: cls.from_dict({typo: 1}),
        ConfigKeyError, rf"no field '{typo}'")
    row("none", f"{cls.__name__}.from_dict(a list)", lambda _, cls=cls: cls.from_dict([1]), ConfigError,
        r"needs a mapping")
    row("none", f"{cls.__name__}(too many positional)", lambda _, cls=cls: cls(*range(len(fields(cls)) + 1)),
        ConfigKeyError, r"positional values")
row("none", "BackgroundTrainingConfig.from_dict(flux typo)",
    lambda _: BackgroundTrainingConfig.from_dict({"flux": {"gamm": 0.5}}), ConfigKeyError,
    r"FluxConfig has no field 'gamm'; did you mean 'gamma'\?")
row("none", "RuntimeDetectorConfig(positional and keyword)",
    lambda _: RuntimeDetectorConfig(True, enabled=False), ConfigKeyError, r"enabled is given twice")
row("none", "dataclasses.replace(RSIConfig(), typo)",
    lambda _: dataclasses.replace(RSIConfig(), enabld=True), ConfigKeyError, r"did you mean 'enabled'")


@pytest.mark.parametrize("case", ROWS, ids=str)
def test_bad_input_is_refused_naming_it_and_changes_nothing(case, tmp_path):
    target = TARGETS[case.target]
    obj = target.build(tmp_path)
    before = target.fingerprint(obj)
    with pytest.raises(case.error) as info:
        case.call(obj)
    assert re.search(case.match, str(info.value)), f"{info.value!r} does not match {case.match!r}"
    assert target.fingerprint(obj) == before
    target.still_works(obj)


# ------------------------------------------------------------------------------------------ CLI
def _vortex(*argv: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    # the vortex this test imported (the built source tree here, the installed package in CI)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(vortex.__file__))}
    return subprocess.run([sys.executable, "-P", "-m", "vortex.cli", *argv], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def pristine_home(tmp_path_factory):
    """A home with a registry (two versions, one swap), an audit log and an empty proposals dir."""
    from vortex.rsi.audit import AuditLog

    home = tmp_path_factory.mktemp("pristine") / "home"
    reg = ModelRegistry(str(home / "models"))
    for seed in (0, 1):
        v = reg.register(mlp(**{**FACTORY_KWARGS, "seed": seed}), {"trigger": "test"})
        reg.set_active(v, f"seed {seed}")
    (home / "rsi" / "proposals").mkdir(parents=True)
    AuditLog(str(home / "rsi" / "audit.jsonl")).append("test", note="one entry")
    return str(home)


def _corrupt(home: str, rel: str, data: bytes = b"garbage\n") -> str:
    path = os.path.join(home, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


@dataclass(frozen=True)
class CliRow:
    what: str
    argv: tuple[str, ...]  # "{home}" is the home, "{missing}" a path that does not exist
    status: int
    match: str
    damage: str | None = None  # a file under the home to overwrite with garbage first

    def __str__(self) -> str:
        return self.what


READ_ONLY = [("status",), ("audit", "verify"), ("proposals", "list"), ("proposals", "show", "x1"),
             ("models", "list"), ("models", "log"), ("models", "at", "0"), ("models", "verify")]
WRITING = [("proposals", "approve", "x1"), ("proposals", "reject", "x1"),
           ("proposals", "rollback", "x1"), ("models", "swap", "1"), ("models", "cleanup")]
CLI_ROWS = [CliRow(f"{' '.join(c)} on a missing home", (*c[:1], "--home", "{missing}", *c[1:])
                   if c[0] == "models" else (*c, "--home", "{missing}"), 1,
                   r"no Vortex home at '.*missing'")
            for c in READ_ONLY + WRITING]
CLI_ROWS += [
    CliRow("models at not-a-time", ("models", "--home", "{home}", "at", "not-a-time"), 2,
           r"'not-a-time' is neither unix seconds nor an ISO 8601 time"),
    CliRow("models at ''", ("models", "--home", "{home}", "at", ""), 2, r"'' is neither"),
    CliRow("models at 1e300", ("models", "--home", "{home}", "at", "1e300"), 2,
           r"'1e300' is not a representable time"),
    CliRow("models at nan", ("models", "--home", "{home}", "at", "nan"), 2, r"'nan' is not a representable"),
    CliRow("models at 2026-13-45", ("models", "--home", "{home}", "at", "2026-13-45"), 2, r"'2026-13-45'"),
    CliRow("models cleanup --keep -1", ("models", "--home", "{home}", "cleanup", "--keep", "-1"), 2,
           r"--keep: '-1': must be an integer >= 0"),
    CliRow("models cleanup --keep 1.5", ("models", "--home", "{home}", "cleanup", "--keep", "1.5"), 2,
           r"--keep: '1\.5' is not an integer"),
    CliRow("models cleanup --keep many", ("models", "--home", "{home}", "cleanup", "--keep", "many"), 2,
           r"'many' is not an integer"),
    CliRow("models cleanup --max-age-days -5",
           ("models", "--home", "{home}", "cleanup", "--max-age-days", "-5"), 2,
           r"--max-age-days: '-5': must be a finite number > 0"),
    CliRow("models cleanup --max-age-days 0", ("models", "--home", "{home}", "cleanup", "--max-age-days", "0"),
           2, r"'0': must be a finite number > 0"),
    CliRow("models cleanup --max-age-days nan",
           ("models", "--home", "{home}", "cleanup", "--max-age-days", "nan"), 2, r"'nan'"),
    CliRow("models cleanup --max-age-days inf",
           ("models", "--home", "{home}", "cleanup", "--max-age-days", "inf"), 2, r"'inf'"),
    CliRow("models cleanup --max-age-days week",
           ("models", "--home", "{home}", "cleanup", "--max-age-days", "week"), 2, r"'week' is not a number"),
    CliRow("models swap 0", ("models", "--home", "{home}", "swap", "0"), 2, r"'0': must be an integer >= 1"),
    CliRow("models swap -1", ("models", "--home", "{home}", "swap", "-1"), 2, r"'-1'"),
    CliRow("models swap x", ("models", "--home", "{home}", "swap", "x"), 2, r"'x' is not an integer"),
    CliRow("models swap 99", ("models", "--home", "{home}", "swap", "99"), 1, r"version 99"),
    CliRow("models --registry missing list", ("models", "--registry", "{missing}", "list"), 1,
           r"no model registry at '.*missing'"),
    CliRow("models --storage-options not-json",
           ("models", "--registry", "{home}/models", "--storage-options", "nope", "list"), 2,
           r"--storage-options: 'nope' is not JSON"),
    CliRow("models --storage-options [1]",
           ("models", "--registry", "{home}/models", "--storage-options", "[1]", "list"), 2,
           r"'\[1\]' must be a JSON object"),
    CliRow("proposals show unknown id", ("proposals", "show", "nope", "--home", "{home}"), 1,
           r"no proposal with id 'nope'"),
    CliRow("proposals show ../../etc/passwd", ("proposals", "show", "../../etc/passwd", "--home", "{home}"),
           1, r"'\.\./\.\./etc/passwd'"),
    CliRow("proposals approve unknown id", ("proposals", "approve", "nope", "--home", "{home}"), 1,
           r"no proposal with id 'nope'"),
    CliRow("proposals approve unknown id --json", ("proposals", "approve", "nope", "--home", "{home}",
                                                   "--json"), 1, r"no proposal with id 'nope'"),
    CliRow("proposals rollback --root missing",
           ("proposals", "rollback", "nope", "--home", "{home}", "--root", "{missing}"), 2,
           r"--root: '.*missing' is not a directory"),
    CliRow("proposals list --status bogus", ("proposals", "list", "--home", "{home}", "--status", "bogus"),
           2, r"invalid choice: 'bogus'"),
    CliRow("audit verify --log missing", ("audit", "verify", "--log", "{missing}"), 1,
           r"no audit log at '.*missing'"),
    CliRow("demo --seed -1", ("demo", "--seed", "-1"), 2, r"--seed: '-1': must be an integer >= 0"),
    CliRow("demo --seed x", ("demo", "--seed", "x"), 2, r"'x' is not an integer"),
    CliRow("demo --home an unrelated directory", ("demo", "--home", "{home}"), 2,
           r"--home '.*home' exists and is not an earlier demo's home"),
    CliRow("demo --home a file", ("demo", "--home", "{home}/rsi/audit.jsonl"), 2, r"is not a directory"),
    CliRow("unknown command", ("frobnicate",), 2, r"invalid choice: 'frobnicate'"),
    CliRow("unknown option", ("status", "--home", "{home}", "--colour"), 2, r"unrecognized arguments: --colour"),
    CliRow("models without action", ("models", "--home", "{home}"), 2, r"required: ACTION"),
    # corrupt files: a state error naming the file
    CliRow("models list on a corrupt registry", ("models", "--home", "{home}", "list"), 1,
           r"versions\.arrow", damage="models/versions.arrow"),
    CliRow("models verify on a corrupt registry", ("models", "--home", "{home}", "verify"), 1,
           r"versions\.arrow", damage="models/versions.arrow"),
    CliRow("models at on a corrupt registry", ("models", "--home", "{home}", "at", "0"), 1,
           r"versions\.arrow", damage="models/versions.arrow"),
    CliRow("status on a corrupt registry", ("status", "--home", "{home}"), 1, r"versions\.arrow",
           damage="models/versions.arrow"),
    CliRow("status on a corrupt runs.json", ("status", "--home", "{home}"), 1, r"runs\.json: not valid JSON",
           damage="runs.json"),
    CliRow("status on a corrupt buffer", ("status", "--home", "{home}"), 1, r"buffer\.arrow",
           damage="buffer.arrow"),
    CliRow("proposals list on a corrupt proposal", ("proposals", "list", "--home", "{home}"), 1, r".",
           damage="rsi/proposals/20260101000000-deadbeef.json"),
]


@pytest.mark.parametrize("case", CLI_ROWS, ids=str)
def test_cli_refuses_bad_input_in_one_line(case, pristine_home, tmp_path):
    home = str(tmp_path / "home")
    shutil.copytree(pristine_home, home)
    if case.damage:
        _corrupt(home, case.damage)
    missing = str(tmp_path / "missing")
    before = _files(home)
    out = _vortex(*(a.format(home=home, missing=missing) for a in case.argv), cwd=str(tmp_path))
    assert out.returncode == case.status, (out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert re.search(case.match, lines[0]), lines[0]
    assert _files(home) == before  # nothing written, nothing deleted
    assert not os.path.exists(missing)  # a missing home is never created


def test_read_only_commands_create_nothing_in_an_empty_home(tmp_path):
    """An existing but empty home: the reads succeed (or report no registry) and add nothing."""
    for argv in [("status",), ("audit", "verify"), ("proposals", "list")]:
        out = _vortex(*argv, "--home", str(tmp_path))
        assert out.returncode == 0, out.stderr
    out = _vortex("models", "--home", str(tmp_path), "list")
    assert out.returncode == 1 and out.stderr.strip().endswith(f"no model registry at '{tmp_path}/models'")
    assert os.listdir(tmp_path) == []


def test_demo_refusing_a_home_deletes_nothing_in_it(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    out = _vortex("demo", "--quick", "--home", str(precious), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and "not an earlier demo's home" in out.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- properties
ANYTHING = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1), st.integers(-2 ** 70, 2 ** 70),
    st.integers(-3, 5), st.booleans(), st.none(), st.text(max_size=3), st.complex_numbers(),
    st.floats(0, 1).map(np.float32), st.integers(-5, 5).map(np.int64), st.just(np.uint64(2 ** 64 - 1)),
    st.floats(0, 1).map(np.array), st.lists(st.floats(0, 1), max_size=2).map(np.array))


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Three times in four a value of ``valid``, else anything: both outcomes get exercised."""
    return st.integers(0, 3).flatmap(lambda k: ANYTHING if k == 0 else valid)  # one_of would flatten


UNIT = st.one_of(st.floats(0, 1), st.floats(0, 1).map(np.float32), st.sampled_from([0, 1]))
INT64 = st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.integers(-9, 9).map(np.int32))


def _real_or_none(value: Any) -> float | None:
    """The float a real-number argument stands for, or None if it is not one (the oracle)."""
    if getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _int64_or_none(value: Any) -> int | None:
    if getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value) if -2 ** 63 <= int(value) < 2 ** 63 else None


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(latency=mostly(st.floats(0, 1e6)), confidence=mostly(UNIT),
       error=mostly(st.one_of(UNIT, st.just(math.nan))))
def test_record_sample_stores_exactly_or_refuses_and_changes_nothing(latency, confidence, error):
    det = RuntimeDetector(RuntimeDetectorConfig(window_size=60), memory_probe=lambda: 0.1)
    det.record_sample(1.0, 0.5)
    before = _arrays(det._window.snapshot())
    lat, conf, err = (_real_or_none(v) for v in (latency, confidence, error))
    valid = (lat is not None and 0 <= lat < math.inf and conf is not None and 0 <= conf <= 1
             and err is not None and (math.isnan(err) or 0 <= err < math.inf))
    event("refused" if not valid else "stored")
    if not valid:
        with pytest.raises(ValueError):
            det.record_sample(latency, confidence, error)
        assert _arrays(det._window.snapshot()) == before
        return
    det.record_sample(latency, confidence, error)
    snap = det._window.snapshot()
    assert len(det) == 2
    assert (snap["latency_ms"][-1], snap["confidence"][-1]) == (lat, conf)
    assert snap["error"][-1] == err or (math.isnan(err) and math.isnan(snap["error"][-1]))


@PROPERTY
@given(label=mostly(INT64), confidence=mostly(UNIT), error=mostly(st.one_of(UNIT, st.just(math.nan))),
       episode=mostly(INT64))
def test_push_stores_exactly_or_refuses_and_changes_nothing(label, confidence, error, episode):
    buf = SampleBuffer(DIM, 8)
    buf.push(np.ones(DIM, np.float32), 1, 0.5, 0.5, 3)
    snap0 = buf.snapshot()
    before = _arrays({f.name: getattr(snap0, f.name) for f in fields(snap0)})
    lab, ep = _int64_or_none(label), _int64_or_none(episode)
    conf, err = _real_or_none(confidence), _real_or_none(error)
    valid = (lab is not None and ep is not None and conf is not None and 0 <= conf <= 1
             and err is not None and (math.isnan(err) or 0 <= err <= 1))
    x = np.arange(DIM, dtype=np.float32)
    event("refused" if not valid else "stored")
    if not valid:
        with pytest.raises(ValueError):
            buf.push(x, label, confidence, error, episode)
        snap = buf.snapshot()
        assert _arrays({f.name: getattr(snap, f.name) for f in fields(snap)}) == before
        return
    assert buf.push(x, label, confidence, error, episode) == 1
    snap = buf.snapshot()
    assert (snap.labels[-1], snap.episode[-1]) == (lab, ep)
    assert snap.confidence[-1] == np.float32(conf)
    assert snap.error[-1] == np.float32(err) or (math.isnan(err) and math.isnan(snap.error[-1]))
    np.testing.assert_array_equal(snap.features[-1], x)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    orch = Orchestrator(mlp(**FACTORY_KWARGS), FACTORY, tmp_path_factory.mktemp("served"),
                        feature_dim=DIM)
    yield orch
    orch.close()


@PROPERTY
@given(label=st.integers(0, 1).flatmap(lambda k: ANYTHING if k == 0 else st.one_of(
    st.integers(0, CLASSES - 1), st.integers(-1, CLASSES).map(float),
    st.integers(0, CLASSES - 1).map(np.int16), st.just(torch.tensor(1)))))
def test_feedback_takes_a_class_exactly_or_refuses_and_the_request_stays_pending(served, label):
    pred = served.infer(np.linspace(-1, 1, DIM, dtype=np.float32))
    pending = served.system_status().pending_feedback
    scalar = label.item() if getattr(label, "ndim", None) == 0 else label
    cls = None
    if isinstance(scalar, (int, np.integer)) and not isinstance(scalar, (bool, np.bool_)):
        cls = int(scalar)
    elif isinstance(scalar, (float, np.floating)) and math.isfinite(scalar) and float(scalar).is_integer():
        cls = int(scalar)
    event("refused" if cls is None or not 0 <= cls < CLASSES else "taken")
    if cls is None or not 0 <= cls < CLASSES:
        with pytest.raises(ValueError, match=r"label="):
            served.feedback(pred.request_id, label)
        assert served.system_status().pending_feedback == pending
        label, cls = 0, 0  # the request is still answerable
    error = served.feedback(pred.request_id, label)
    assert error == pytest.approx(1.0 - pred.probabilities[cls])
    assert served.system_status().pending_feedback == pending - 1

