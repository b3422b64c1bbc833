"""SampleBuffer against what a user would pick instead: torchrl's ReplayBuffer over a
LazyTensorStorage, and a plain NumPy copy of the same bytes (the memory-bandwidth ceiling).

Groups (ratios printed by conftest.py; goals from issue 3):
- buffer.push: one 32-dim float32 sample from Python, <= 300 ns and >= 50x torchrl add;
- buffer.extend: 1,000-row batches, >= 70% of the NumPy copy speed, >= 5x torchrl extend. The
  reference copy is ``test_extend_numpy_copy_same_bytes_ring``: the batch's 160 kB into the
  next slot of a 1.6 MB destination, cycling like the ring (whose 10,000 rows are 1.6 MB), so
  source, destination footprint and cache behaviour match what extend must do. The cache-hot
  copy into a single 160 kB destination is shown for reference only: no ring larger than one
  batch can write into a destination that stays in L1/L2 like that;
- buffer.sample: 256 rows, >= 3x torchrl sample;
- buffer.memory: bytes held by a 10,000 x 32 buffer, <= 1.6 MB.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vortex.training import SampleBuffer

torchrl = pytest.importorskip("torchrl")
from tensordict import TensorDict  # noqa: E402  (a torchrl dependency)
from torchrl.data import LazyTensorStorage, ReplayBuffer  # noqa: E402

DIM = 32
CAPACITY = 10_000
BATCH = 1_000
PUSH_LOOP = 2_000       # calls per timed round (ns-scale calls)
PEER_PUSH_LOOP = 100


def _rows(n, rng):
    return dict(features=rng.normal(size=(n, DIM)).astype(np.float32),
                labels=rng.integers(0, 10, n).astype(np.int64),
                confidences=rng.random(n).astype(np.float32),
                errors=rng.random(n).astype(np.float32),
                episodes=(np.arange(n) // 10).astype(np.int64),
                timestamps=np.full(n, 1.7e9))


def _tensordict(cols, batch=True):
    td = TensorDict({"features": torch.from_numpy(cols["features"]),
                     "label": torch.from_numpy(cols["labels"]),
                     "confidence": torch.from_numpy(cols["confidences"]),
                     "error": torch.from_numpy(cols["errors"]),
                     "episode": torch.from_numpy(cols["episodes"]),
                     "timestamp": torch.from_numpy(cols["timestamps"])},
                    batch_size=[len(cols["labels"])])
    return td if batch else td[0]


def _torchrl_buffer():
    return ReplayBuffer(storage=LazyTensorStorage(CAPACITY))


# ----------------------------------------------------------------------------------- push
def test_push_vortex(benchmark):
    benchmark.group = "buffer.push (one 32-dim float32 sample)"
    benchmark.extra_info["calls_per_round"] = PUSH_LOOP
    buf = SampleBuffer(DIM, CAPACITY)
    x = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    push = buf.push

    def loop():
        for i in range(PUSH_LOOP):
            push(x, 3, 0.9)

    benchmark.pedantic(loop, rounds=30, warmup_rounds=2)
    snap = buf.snapshot(1)
    np.testing.assert_array_equal(snap.features[0], x)
    assert snap.labels[0] == 3 and buf.next_seq % PUSH_LOOP == 0 and buf.next_seq >= PUSH_LOOP


def test_push_torchrl_replaybuffer_add(benchmark):
    benchmark.group = "buffer.push (one 32-dim float32 sample)"
    benchmark.extra_info["calls_per_round"] = PEER_PUSH_LOOP
    rb = _torchrl_buffer()
    td = _tensordict(_rows(1, np.random.default_rng(0)), batch=False)

    def loop():
        for _ in range(PEER_PUSH_LOOP):
            rb.add(td)

    benchmark.pedantic(loop, rounds=10, warmup_rounds=1)
    assert len(rb) >= PEER_PUSH_LOOP
    torch.testing.assert_close(rb[len(rb) - 1]["features"], td["features"])


# --------------------------------------------------------------------------------- extend
def test_extend_vortex(benchmark):
    benchmark.group = "buffer.extend (1,000 rows x 32 + 5 columns)"
    buf = SampleBuffer(DIM, CAPACITY)
    cols = _rows(BATCH, np.random.default_rng(1))
    benchmark.pedantic(lambda: buf.extend(**cols), rounds=300, warmup_rounds=10)
    snap = buf.snapshot(BATCH)
    np.testing.assert_array_equal(snap.features, cols["features"])
    np.testing.assert_array_equal(snap.episode, cols["episodes"])


def test_extend_numpy_copy_same_bytes_ring(benchmark):
    """The ceiling: a NumPy copy of the batch's bytes (160 kB) into the next slot of a
    destination as large as the ring (1.6 MB), as the ring itself writes."""
    benchmark.group = "buffer.extend (1,000 rows x 32 + 5 columns)"
    cols = _rows(BATCH, np.random.default_rng(1))
    src = np.concatenate([a.view(np.uint8).reshape(-1) for a in cols.values()])
    slots = CAPACITY // BATCH
    dst = np.zeros((slots, src.nbytes), np.uint8)
    state = {"slot": 0}

    def copy():
        np.copyto(dst[state["slot"]], src)
        state["slot"] = (state["slot"] + 1) % slots

    benchmark.extra_info["bytes"] = int(src.nbytes)
    benchmark.pedantic(copy, rounds=300, warmup_rounds=10)
    assert np.array_equal(dst[(state["slot"] - 1) % slots], src)


def test_extend_numpy_copy_same_bytes_hot(benchmark):
    """For reference: the same copy into one 160 kB destination that stays in cache."""
    benchmark.group = "buffer.extend (1,000 rows x 32 + 5 columns)"
    cols = _rows(BATCH, np.random.default_rng(1))
    src = np.concatenate([a.view(np.uint8).reshape(-1) for a in cols.values()])
    dst = np.empty_like(src)
    benchmark.pedantic(np.copyto, args=(dst, src), rounds=300, warmup_rounds=10)
    assert np.array_equal(dst, src)


def test_extend_torchrl_replaybuffer(benchmark):
    benchmark.group = "buffer.extend (1,000 rows x 32 + 5 columns)"
    rb = _torchrl_buffer()
    cols = _rows(BATCH, np.random.default_rng(1))
    td = _tensordict(cols)
    benchmark.pedantic(rb.extend, args=(td,), rounds=100, warmup_rounds=5)
    torch.testing.assert_close(rb[len(rb) - 1]["features"], td["features"][-1])


# --------------------------------------------------------------------------------- sample
def test_sample_vortex(benchmark):
    benchmark.group = "buffer.sample(256) from 10,000 rows"
    buf = SampleBuffer(DIM, CAPACITY)
    buf.extend(**_rows(CAPACITY, np.random.default_rng(2)))
    rng = np.random.default_rng(3)
    snap = benchmark.pedantic(buf.sample, args=(256, rng), rounds=300, warmup_rounds=10)
    assert len(snap) == 256 and snap.features.shape == (256, DIM)
    # rows are whole buffered rows: features of seq s are row s of the data pushed
    full = buf.snapshot()
    np.testing.assert_array_equal(snap.features, full.features[snap.seq - full.seq[0]])


def test_sample_torchrl_replaybuffer(benchmark):
    benchmark.group = "buffer.sample(256) from 10,000 rows"
    rb = ReplayBuffer(storage=LazyTensorStorage(CAPACITY), batch_size=256)
    rb.extend(_tensordict(_rows(CAPACITY, np.random.default_rng(2))))
    batch = benchmark.pedantic(rb.sample, rounds=100, warmup_rounds=5)
    assert batch["features"].shape == (256, DIM)


# --------------------------------------------------------------------------------- memory
def test_memory_vortex(benchmark):
    """Constructing a 10,000 x 32 buffer; the figure is its nbytes (goal <= 1.6 MB)."""
    benchmark.group = "buffer.memory (10,000 x 32, construct)"
    buf = benchmark.pedantic(SampleBuffer, args=(DIM, CAPACITY), rounds=20)
    benchmark.extra_info["nbytes"] = buf.nbytes
    assert buf.nbytes <= 1_600_000 + 512


def test_memory_torchrl_lazytensorstorage(benchmark):
    benchmark.group = "buffer.memory (10,000 x 32, construct)"
    td = _tensordict(_rows(1, np.random.default_rng(0)))

    def build():
        rb = _torchrl_buffer()
        rb.extend(td)  # LazyTensorStorage allocates its columns on the first write
        return rb

    rb = benchmark.pedantic(build, rounds=20)
    storage = rb.storage._storage
    nbytes = sum(t.numel() * t.element_size() for t in storage.values(True, True))
    benchmark.extra_info["nbytes"] = int(nbytes)
    assert nbytes >= CAPACITY * (DIM * 4 + 8)
