"""Training state for the fault suites: how to make each file pristine, and how to load it.

Each ``make_*`` writes a small but complete instance of one kind of file into a directory;
each ``load_*`` is a harness loader (see ``harness.py``): it opens that directory the way
Vortex does on a restart and returns everything a user could observe. ``KINDS`` lists them for
``tests/faults/test_training_state.py`` and ``scripts/fault_sweep.py``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

BUFFER = "buffer.arrow"
SNAPSHOT = "snapshot.arrow"


def _state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}


def make_registry(directory: str) -> None:
    """Four versions, five swaps (a rollback among them), a pin: every field in use."""
    from vortex.training.registry import ModelRegistry

    reg = ModelRegistry(directory)
    for i in range(1, 5):
        reg.register(_state(i), {"trigger": "manual" if i > 1 else "initial", "samples": 100 * i,
                                 "epochs": i, "val_accuracy": 0.5 + i / 10, "created_at": 1000.0 + i})
    for t, (v, why) in enumerate([(1, "initial"), (2, "auto"), (1, "rollback: watch regression"),
                                  (3, "manual (vortex models swap)"), (4, "auto")]):
        reg.set_active(v, why, at=2000.0 + t)
    reg.pin(2)


def load_registry(directory: str) -> dict[str, Any]:
    """Open the registry as a restarted coordinator or ``vortex models list`` does."""
    from vortex.training.registry import ModelRegistry

    reg = ModelRegistry(directory)
    return {"versions": reg.list_versions(), "log": reg.serving_log(), "active": reg.active_version,
            "pinned": reg.pinned()}


def serving_log_cut_short(summary: dict[str, Any], pristine: dict[str, Any]) -> bool:
    """A log cut at or inside a line reads as the log before that line: the state before those
    swaps (an append-only log cannot tell this from a crash before the appends). Everything
    else must be exactly as it was."""
    log, full = summary["log"], pristine["log"]
    if not (len(log) < len(full) and log == full[:len(log)]):
        return False
    if summary["active"] != (log[-1]["to_version"] if log else None):
        return False
    strip = lambda rows: [{k: v for k, v in r.items() if k != "status"} for r in rows]  # noqa: E731
    return strip(summary["versions"]) == strip(pristine["versions"]) and summary["pinned"] == pristine["pinned"]


def load_weights(directory: str) -> dict[str, Any]:
    """Load version 2's weights, verified against the sha256 the registry recorded."""
    from safetensors.numpy import load

    from vortex.training.registry import ModelRegistry

    data, sha = ModelRegistry(directory).load_verified(2)
    return {"sha256": sha, **{k: v.tolist() for k, v in sorted(load(data).items())}}


def _rows(n: int, dim: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    seq = np.arange(start, start + n)
    features = (np.sin(seq[:, None] * 0.37 + np.arange(dim)[None, :])).astype(np.float32)
    return features, (seq % 7).astype(np.int64)


def make_buffer(directory: str) -> None:
    """A saved buffer that wrapped around (capacity 96, 150 rows pushed)."""
    from vortex.training import SampleBuffer

    buf = SampleBuffer(6, capacity=96)
    x, y = _rows(150, 6)
    buf.extend(x, y, confidences=np.linspace(0, 1, 150, dtype=np.float32),
               errors=np.linspace(1, 0, 150, dtype=np.float32), episodes=np.arange(150) // 10)
    buf.save(os.path.join(directory, BUFFER))


def _summary(snap: Any) -> dict[str, Any]:
    return {name: getattr(snap, name).tolist() for name in
            ("features", "labels", "confidence", "error", "timestamp", "seq", "episode")}


def load_buffer(directory: str) -> dict[str, Any]:
    """Reload the buffer as a restarted coordinator does."""
    from vortex.training import SampleBuffer

    buf = SampleBuffer.load(os.path.join(directory, BUFFER))
    return {"next_seq": buf.next_seq, "capacity": buf.capacity, **_summary(buf.snapshot())}


def make_snapshot(directory: str) -> None:
    """A run's snapshot as the coordinator writes it for the worker (regression labels)."""
    from vortex.training import SampleBuffer

    buf = SampleBuffer(5, capacity=200, label_dtype="float32")
    x, y = _rows(120, 5)
    buf.extend(x, y.astype(np.float32), episodes=np.arange(120) // 4)
    buf.snapshot().write_ipc(os.path.join(directory, SNAPSHOT))


def load_snapshot(directory: str) -> dict[str, Any]:
    """Read the snapshot as a training worker does."""
    from vortex.training import Snapshot

    return _summary(Snapshot.read_ipc(os.path.join(directory, SNAPSHOT)))


def make_unsealed_registry(directory: str) -> None:
    """A registry whose versions.arrow was written before files were sealed (plain Arrow IPC)."""
    from vortex._io import SEAL_SIZE

    make_registry(directory)
    path = os.path.join(directory, "versions.arrow")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-SEAL_SIZE])


#: name -> (make the pristine directory, the damaged file, loader, acceptable recovery or None)
KINDS: dict[str, tuple[Any, str, str, Any]] = {
    "versions.arrow": (make_registry, "versions.arrow", "training_loaders:load_registry", None),
    "serving_log.jsonl": (make_registry, "serving_log.jsonl", "training_loaders:load_registry",
                          serving_log_cut_short),
    "weights": (make_registry, "v000002.safetensors", "training_loaders:load_weights", None),
    "buffer.arrow": (make_buffer, BUFFER, "training_loaders:load_buffer", None),
    "snapshot.arrow": (make_snapshot, SNAPSHOT, "training_loaders:load_snapshot", None),
}
#: Files in the format written before sealing: Vortex validates them fully, so damage never
#: crashes it or raises an unrelated error, but a changed value can pass (no checksum existed).
UNSEALED_KINDS: dict[str, tuple[Any, str, str, Any]] = {
    "versions.arrow (unsealed, older format)": (make_unsealed_registry, "versions.arrow",
                                                "training_loaders:load_registry", None),
}
