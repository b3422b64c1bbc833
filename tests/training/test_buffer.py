import os
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from vortex.errors import CorruptFileError, SnapshotFormatError
from vortex.training import SampleBuffer, Snapshot


def rows(n, dim, start=0):
    """Features whose every value encodes the row index (checkable after a round trip)."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None] * 0.5, dim, axis=1)


def assert_same(a: Snapshot, b: Snapshot):
    for name in ("features", "labels", "confidence", "error", "timestamp", "seq", "episode"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype


# ------------------------------------------------------------------------------- push / extend
def test_push_returns_seq_and_stores_every_column():
    buf = SampleBuffer(3, capacity=10)
    assert (len(buf), buf.next_seq, buf.capacity, buf.feature_dim, buf.label_dtype) == (0, 0, 10, 3, "int64")
    assert buf.push(np.array([1, 2, 3], np.float32), 7, confidence=0.25, error=0.5, episode=4,
                    timestamp=123.5) == 0
    assert buf.push([4.0, 5.0, 6.0], 8) == 1
    snap = buf.snapshot()
    assert len(snap) == len(buf) == 2 and buf.next_seq == 2
    np.testing.assert_array_equal(snap.features, [[1, 2, 3], [4, 5, 6]])
    assert snap.features.dtype == np.float32 and snap.labels.dtype == np.int64
    assert snap.labels.tolist() == [7, 8]
    assert snap.confidence.tolist() == [0.25, 1.0]
    assert snap.error[0] == 0.5 and np.isnan(snap.error[1])
    assert snap.episode.tolist() == [4, 0]
    assert snap.timestamp[0] == 123.5
    assert snap.seq.tolist() == [0, 1]


def test_push_default_timestamp_is_wall_clock():
    import time

    buf = SampleBuffer(2)
    before = time.time()
    buf.push([0, 0], 0)
    after = time.time()
    assert before - 1e-3 <= buf.snapshot().timestamp[0] <= after + 1e-3


@pytest.mark.parametrize("features", [
    np.array([1.0, 2.0, 3.0]),                       # float64: same-kind cast
    np.array([1, 2, 3], dtype=np.int32),             # int -> float
    np.arange(1, 7, dtype=np.float32)[::2],          # non-contiguous view
    np.array([1, 2, 3], dtype=">f4"),                # big-endian
    torch.tensor([1.0, 2.0, 3.0], requires_grad=True),
    [1, 2, 3],
    (1.0, 2.0, 3.0),
])
def test_push_accepts_array_likes(features):
    buf = SampleBuffer(3)
    buf.push(features, 1)
    expected = np.asarray(features.detach() if isinstance(features, torch.Tensor) else features,
                          dtype=np.float32)
    np.testing.assert_array_equal(buf.snapshot().features[0], expected)


def test_push_accepts_readonly_and_numpy_scalars_and_tensor_labels():
    buf = SampleBuffer(2)
    x = np.array([1, 2], np.float32)
    x.setflags(write=False)
    buf.push(x, np.int64(3), confidence=np.float32(0.5), episode=np.int64(2))
    buf.push(x, torch.tensor(4))
    assert buf.snapshot().labels.tolist() == [3, 4]


def test_float32_labels():
    buf = SampleBuffer(2, label_dtype="float32")
    buf.push([0, 1], 0.25)
    buf.push([0, 1], 3)
    buf.extend(np.zeros((2, 2)), np.array([1.5, -2.0]))
    snap = buf.snapshot()
    assert snap.labels.dtype == np.float32 and snap.labels.tolist() == [0.25, 3.0, 1.5, -2.0]


def test_overwrites_oldest_and_keeps_seq():
    buf = SampleBuffer(2, capacity=5)
    for i in range(12):
        assert buf.push(rows(1, 2, i)[0], i) == i
    snap = buf.snapshot()
    assert len(buf) == 5 and buf.next_seq == 12
    assert snap.seq.tolist() == [7, 8, 9, 10, 11] and snap.labels.tolist() == [7, 8, 9, 10, 11]
    np.testing.assert_array_equal(snap.features, rows(5, 2, 7))
    assert buf.snapshot(max_rows=2).seq.tolist() == [10, 11]
    assert len(buf.snapshot(max_rows=0)) == 0


def test_extend_columns_defaults_and_first_seq():
    buf = SampleBuffer(4, capacity=100)
    buf.push(np.zeros(4), 0)
    first = buf.extend(rows(10, 4), np.arange(10), confidences=np.full(10, 0.5),
                       errors=np.linspace(0, 1, 10), episodes=np.arange(10) // 3,
                       timestamps=np.arange(10.0))
    assert first == 1 and buf.next_seq == 11
    snap = buf.snapshot()
    np.testing.assert_array_equal(snap.features[1:], rows(10, 4))
    assert snap.labels[1:].tolist() == list(range(10))
    np.testing.assert_allclose(snap.error[1:], np.linspace(0, 1, 10).astype(np.float32))
    assert snap.episode[1:].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert snap.timestamp[1:].tolist() == list(range(10))
    assert buf.extend(rows(2, 4), [1, 2]) == 11
    tail = buf.snapshot(2)
    assert tail.confidence.tolist() == [1, 1] and np.isnan(tail.error).all()
    assert tail.episode.tolist() == [0, 0]
    assert buf.extend(np.zeros((0, 4), np.float32), np.zeros(0, np.int64)) == 13 and len(buf) == 13


def test_extend_torch_tensors_and_wraparound():
    buf = SampleBuffer(3, capacity=7)
    buf.extend(torch.from_numpy(rows(5, 3)), torch.arange(5))
    buf.extend(torch.from_numpy(rows(4, 3, 5)), torch.arange(5, 9), episodes=torch.ones(4, dtype=torch.int32))
    snap = buf.snapshot()
    assert snap.seq.tolist() == list(range(2, 9)) and snap.labels.tolist() == list(range(2, 9))
    np.testing.assert_array_equal(snap.features, rows(7, 3, 2))


def test_extend_larger_than_capacity_keeps_newest_and_counts_all():
    buf = SampleBuffer(2, capacity=4)
    buf.push([9, 9], 99)
    assert buf.extend(rows(10, 2), np.arange(10)) == 1
    snap = buf.snapshot()
    assert buf.next_seq == 11 and snap.seq.tolist() == [7, 8, 9, 10]
    assert snap.labels.tolist() == [6, 7, 8, 9]
    np.testing.assert_array_equal(snap.features, rows(4, 2, 6))


BAD_PUSH = [
    (dict(features=[1.0, 2.0]), "feature_dim"),
    (dict(features=np.ones((1, 3))), "shape"),
    (dict(features=[1.0, np.nan, 3.0]), "features[1]"),
    (dict(features=[1.0, 2.0, np.inf]), "features[2]"),
    (dict(features=np.ones(3, np.complex64)), "complex64"),
    (dict(features=np.array(["a", "b", "c"])), "cannot be cast"),
    (dict(features=np.array([1, 2, 3], dtype=object)), "object"),
    (dict(features=[1.0, 2.0, 3.0], label=1.5), "label=1.5"),
    (dict(features=[1.0, 2.0, 3.0], label="x"), "label='x'"),
    (dict(features=[1.0, 2.0, 3.0], label=2**70), "label=1180591620717411303424"),
    (dict(features=[1.0, 2.0, 3.0], confidence=1.5), "confidence=1.5"),
    (dict(features=[1.0, 2.0, 3.0], confidence=-0.1), "confidence=-0.1"),
    (dict(features=[1.0, 2.0, 3.0], confidence=float("nan")), "confidence=nan"),
    (dict(features=[1.0, 2.0, 3.0], error=1.2), "error=1.2"),
    (dict(features=[1.0, 2.0, 3.0], timestamp=float("inf")), "timestamp=inf"),
]


@pytest.mark.parametrize("kwargs,needle", BAD_PUSH)
def test_push_rejects_bad_input_and_stores_nothing(kwargs, needle):
    buf = SampleBuffer(3, capacity=4)
    buf.extend(rows(6, 3), np.arange(6))
    before = buf.snapshot()
    kwargs = {"label": 1, **kwargs}
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        buf.push(**kwargs)
    assert buf.next_seq == 6 and len(buf) == 4
    assert_same(buf.snapshot(), before)


def test_float_buffer_rejects_non_finite_label():
    buf = SampleBuffer(1, label_dtype="float32")
    with pytest.raises(ValueError, match="label=inf"):
        buf.push([0.0], float("inf"))
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        buf.extend(np.zeros((2, 1)), np.array([0.0, np.nan]))
    assert len(buf) == 0 and buf.next_seq == 0


def _bad_batches(n=1000, d=3):
    good = dict(features=rows(n, d), labels=np.arange(n))
    nan_late = rows(n, d)
    nan_late[n - 1, 2] = np.nan
    conf = np.ones(n, np.float32)
    conf[500] = 1.01
    err = np.zeros(n, np.float32)
    err[7] = -0.5
    ts = np.zeros(n)
    ts[3] = np.nan
    return [
        ({**good, "features": nan_late}, rf"features\[{n - 1}, 2\]=nan"),
        ({**good, "features": rows(n, d + 1)}, "feature_dim"),
        ({**good, "features": np.ones((n, d), np.complex128)}, "complex128"),
        ({**good, "labels": np.arange(n - 1)}, "labels: length"),
        ({**good, "labels": np.arange(n) + 0.5}, "labels: dtype float64"),
        ({**good, "labels": np.array(["x"] * n)}, "labels: dtype"),
        ({**good, "confidences": conf}, r"confidences\[500\]=1.01"),
        ({**good, "confidences": np.ones(n + 1)}, "confidences: length"),
        ({**good, "errors": err}, r"errors\[7\]=-0.5"),
        ({**good, "timestamps": ts}, r"timestamps\[3\]=nan"),
        ({**good, "episodes": np.zeros(n)}, "episodes: dtype float64"),
        ({**good, "episodes": np.zeros(n - 2, np.int64)}, "episodes: length"),
    ]


@pytest.mark.parametrize("kwargs,needle", _bad_batches())
def test_extend_validates_whole_batch_before_storing(kwargs, needle):
    buf = SampleBuffer(3, capacity=2000)
    buf.extend(rows(5, 3), np.arange(5))
    before = buf.snapshot()
    with pytest.raises(ValueError, match=needle):
        buf.extend(**kwargs)
    assert buf.next_seq == 5
    assert_same(buf.snapshot(), before)


def test_constructor_validation():
    for kwargs in (dict(feature_dim=0), dict(feature_dim=2, capacity=0), dict(feature_dim=2.5),
                   dict(feature_dim=True), dict(feature_dim=2, label_dtype="float64")):
        with pytest.raises(ValueError):
            SampleBuffer(**kwargs)


def test_clear_keeps_numbering():
    buf = SampleBuffer(2, capacity=3)
    buf.extend(rows(5, 2), np.arange(5))
    buf.clear()
    assert len(buf) == 0 and buf.next_seq == 5 and len(buf.snapshot()) == 0
    assert buf.push([1, 1], 1) == 5
    assert buf.snapshot().seq.tolist() == [5]


def test_nbytes_of_10k_by_32_is_within_1_6_mb():
    buf = SampleBuffer(32, capacity=10_000)
    # column storage 10,000 x (128 + 8 + 4 + 4 + 8 + 8) bytes: seq is implicit (contiguous)
    assert 1_600_000 <= buf.nbytes <= 1_600_000 + 512
    assert buf.nbytes <= 1.6 * 2**20
    assert SampleBuffer(32, capacity=10_000, label_dtype="float32").nbytes <= 1_560_000 + 512


# -------------------------------------------------------------------------------- snapshots
def test_snapshot_is_a_copy():
    buf = SampleBuffer(2, capacity=4)
    buf.extend(rows(3, 2), np.arange(3))
    snap = buf.snapshot()
    buf.extend(rows(4, 2, 100), np.arange(4))
    assert snap.labels.tolist() == [0, 1, 2]
    snap.features[:] = -1
    assert (buf.snapshot().features >= 0).all()


def test_to_arrow_is_zero_copy_with_fixed_size_list():
    buf = SampleBuffer(4, capacity=10)
    buf.extend(rows(6, 4), np.arange(6), errors=np.full(6, np.nan))
    snap = buf.snapshot()
    batch = snap.to_arrow()
    assert batch.num_rows == 6
    assert batch.schema.field("features").type == pa.list_(pa.float32(), 4)
    assert batch.schema.field("label").type == pa.int64()
    assert batch.schema.metadata[b"vortex.feature_dim"] == b"4"
    values = batch.column("features").values
    assert values.buffers()[1].address == snap.features.ctypes.data
    assert batch.column("seq").buffers()[1].address == snap.seq.ctypes.data
    assert batch.column("error").null_count == 0  # NaN stays a value, not a null
    np.testing.assert_array_equal(np.asarray(values).reshape(6, 4), snap.features)
    assert batch.column("seq").to_pylist() == snap.seq.tolist()


def test_to_torch_shares_memory():
    buf = SampleBuffer(3)
    buf.extend(rows(4, 3), np.arange(4))
    snap = buf.snapshot()
    t = snap.to_torch()
    assert set(t) == {"features", "labels", "confidence", "error", "timestamp", "seq", "episode"}
    assert t["features"].shape == (4, 3) and t["features"].dtype == torch.float32
    assert t["labels"].dtype == torch.int64
    t["features"][0, 0] = 42.0
    assert snap.features[0, 0] == 42.0
    assert t["seq"].data_ptr() == snap.seq.ctypes.data


def test_ipc_round_trip(tmp_path):
    buf = SampleBuffer(5, label_dtype="float32")
    buf.extend(rows(20, 5), np.linspace(-1, 1, 20), errors=np.linspace(0, 1, 20),
               episodes=np.arange(20) // 4, confidences=np.full(20, 0.75))
    snap = buf.snapshot()
    path = tmp_path / "snap.arrow"
    snap.write_ipc(path)
    back = Snapshot.read_ipc(path)
    assert_same(back, snap)
    assert back.features.flags.writeable
    back.to_torch()  # writable arrays: torch.from_numpy does not warn
    assert [p.name for p in tmp_path.iterdir()] == ["snap.arrow"]  # no temp file left


def test_ipc_empty_snapshot(tmp_path):
    snap = SampleBuffer(3).snapshot()
    snap.write_ipc(tmp_path / "e.arrow")
    back = Snapshot.read_ipc(tmp_path / "e.arrow")
    assert len(back) == 0 and back.feature_dim == 3


def _corrupt_middle(path):
    data = bytearray(path.read_bytes())
    snap_bytes = len(data)
    data[snap_bytes // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_read_ipc_rejects_corrupted_and_foreign_files(tmp_path):
    buf = SampleBuffer(8)
    buf.extend(rows(200, 8), np.arange(200))
    good = tmp_path / "good.arrow"
    buf.snapshot().write_ipc(good)

    flipped = tmp_path / "flipped.arrow"
    flipped.write_bytes(good.read_bytes())
    _corrupt_middle(flipped)
    with pytest.raises(SnapshotFormatError, match="flipped.arrow: contents do not match their sha256 seal"):
        Snapshot.read_ipc(flipped)

    truncated = tmp_path / "truncated.arrow"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(SnapshotFormatError, match="truncated.arrow: no valid sha256 seal") as info:
        Snapshot.read_ipc(truncated)
    assert isinstance(info.value, CorruptFileError) and isinstance(info.value, ValueError)
    assert info.value.path == str(truncated) and "restore it from a backup" in str(info.value)

    garbage = tmp_path / "garbage.arrow"
    garbage.write_bytes(b"hello world" * 10)
    with pytest.raises(SnapshotFormatError):
        Snapshot.read_ipc(garbage)

    foreign = tmp_path / "foreign.arrow"
    table = pa.table({"x": [1, 2, 3]})
    with pa.OSFile(str(foreign), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with pytest.raises(SnapshotFormatError, match="vortex.format"):
        Snapshot.read_ipc(foreign)

    # right tag, wrong schema (feature_dim in metadata disagrees with the column type)
    batch = buf.snapshot().to_arrow()
    meta = dict(batch.schema.metadata)
    meta[b"vortex.feature_dim"] = b"7"
    meta[b"vortex.crc32"] = b"0"
    lying = tmp_path / "lying.arrow"
    with pa.OSFile(str(lying), "wb") as sink, pa.ipc.new_file(
            sink, batch.schema.with_metadata(meta)) as w:
        w.write_batch(batch.replace_schema_metadata(meta))
    with pytest.raises(SnapshotFormatError, match="does not match the expected"):
        Snapshot.read_ipc(lying)

    with pytest.raises(FileNotFoundError):
        Snapshot.read_ipc(tmp_path / "missing.arrow")


# --------------------------------------------------------------------------------- sampling
def test_sample_uniform_with_replacement():
    buf = SampleBuffer(2, capacity=50)
    buf.extend(rows(80, 2), np.arange(80), episodes=np.arange(80) * 10)
    s = buf.sample(20_000, rng=np.random.default_rng(1))
    assert len(s) == 20_000
    # every row is a whole buffered row, with its own seq
    assert (s.seq >= 30).all() and (s.seq < 80).all()
    np.testing.assert_array_equal(s.labels, s.seq)
    np.testing.assert_array_equal(s.episode, s.seq * 10)
    np.testing.assert_array_equal(s.features[:, 0], s.seq.astype(np.float32) * 0.5)
    counts = np.bincount(s.seq - 30, minlength=50)
    # uniform: each of 50 rows expected 400 times; 6 sigma ~ 120
    assert counts.min() > 280 and counts.max() < 520
    chi2 = ((counts - 400.0) ** 2 / 400.0).sum()
    assert chi2 < 110  # 49 dof: p < 1e-6 beyond this


def test_sample_seeds_and_rng_argument():
    buf = SampleBuffer(2)
    buf.extend(rows(100, 2), np.arange(100))
    assert buf.sample(16, 7).seq.tolist() == buf.sample(16, 7).seq.tolist()
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    assert buf.sample(16, g1).seq.tolist() == buf.sample(16, g2).seq.tolist()
    assert len(buf.sample(5)) == 5 and len(buf.sample(0)) == 0
    with pytest.raises(ValueError, match="n=-1"):
        buf.sample(-1)
    with pytest.raises(ValueError, match="empty"):
        SampleBuffer(2).sample(3)


# ------------------------------------------------------------------------------ persistence
def test_save_load_continues_numbering(tmp_path):
    buf = SampleBuffer(4, capacity=6)
    buf.extend(rows(9, 4), np.arange(9), episodes=np.arange(9) % 2, errors=np.linspace(0, 1, 9))
    path = tmp_path / "buf.arrow"
    buf.save(path)
    back = SampleBuffer.load(path)
    assert (back.capacity, back.feature_dim, back.label_dtype, len(back), back.next_seq) == (6, 4, "int64", 6, 9)
    assert_same(back.snapshot(), buf.snapshot())
    assert back.push(np.zeros(4), 1) == 9
    assert back.snapshot().seq.tolist() == [4, 5, 6, 7, 8, 9]
    small = SampleBuffer.load(path, capacity=2)
    assert small.snapshot().seq.tolist() == [7, 8] and small.next_seq == 9
    big = SampleBuffer.load(path, capacity=100)
    assert len(big) == 6 and big.extend(rows(1, 4), [0]) == 9


def test_save_after_clear_keeps_next_seq(tmp_path):
    buf = SampleBuffer(2)
    buf.extend(rows(3, 2), np.arange(3))
    buf.clear()
    buf.save(tmp_path / "b.arrow")
    back = SampleBuffer.load(tmp_path / "b.arrow")
    assert len(back) == 0 and back.next_seq == 3


def test_load_into_replaces_contents(tmp_path):
    src = SampleBuffer(3, capacity=5)
    src.extend(rows(7, 3), np.arange(7))
    src.save(tmp_path / "s.arrow")
    dst = SampleBuffer(3, capacity=3)
    dst.extend(rows(2, 3, 50), [50, 51])
    dst.load_into(tmp_path / "s.arrow")
    assert dst.snapshot().seq.tolist() == [4, 5, 6] and dst.next_seq == 7
    assert dst.push([0, 0, 0], 0) == 7


def test_bad_files_leave_buffer_untouched(tmp_path):
    src = SampleBuffer(3, capacity=50)
    src.extend(rows(40, 3), np.arange(40))
    good = tmp_path / "good.arrow"
    src.save(good)

    dst = SampleBuffer(3, capacity=10)
    dst.extend(rows(4, 3, 100), np.arange(4))
    before = dst.snapshot()

    bad = tmp_path / "bad.arrow"
    bad.write_bytes(good.read_bytes())
    _corrupt_middle(bad)
    other_dim = tmp_path / "dim.arrow"
    SampleBuffer(4).save(other_dim)
    other_label = tmp_path / "label.arrow"
    SampleBuffer(3, label_dtype="float32").save(other_label)
    sampled = tmp_path / "sampled.arrow"  # not a contiguous run of seqs: not a saved buffer
    src.sample(10, 0).write_ipc(sampled)

    for path, needle in ((bad, "sha256 seal"), (other_dim, "feature_dim=4"), (other_label, "float32"),
                         (sampled, "contiguous")):
        with pytest.raises(SnapshotFormatError, match=needle):
            dst.load_into(path)
        assert_same(dst.snapshot(), before)
        assert dst.next_seq == 4
    with pytest.raises(SnapshotFormatError):
        SampleBuffer.load(bad)


def test_load_rejects_invalid_values_written_behind_our_back(tmp_path):
    buf = SampleBuffer(2)
    buf.extend(rows(3, 2), np.arange(3))
    snap = buf.snapshot()
    poisoned = Snapshot(snap.features.copy(), snap.labels, snap.confidence.copy(), snap.error,
                        snap.timestamp, snap.seq, snap.episode)
    poisoned.confidence[1] = 3.0  # a valid file format, an invalid sample
    path = tmp_path / "p.arrow"
    poisoned.write_ipc(path, {"vortex.next_seq": "3"})
    with pytest.raises(SnapshotFormatError, match="confidences"):
        SampleBuffer.load(path)


_SAVE_PAST_THE_SIZE_LIMIT = """
import resource, signal, sys
import numpy as np
from vortex.training import SampleBuffer
buf = SampleBuffer.load(sys.argv[1])
buf.extend(np.ones((500, 2), np.float32), np.arange(500))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
try:
    buf.save(sys.argv[1])
except OSError as exc:
    print("failed:", exc)
"""


def test_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path):
    """A save that fails half-way for real (the file-size limit) keeps the old file."""
    import subprocess
    import sys

    buf = SampleBuffer(2)
    buf.extend(rows(3, 2), np.arange(3))
    path = tmp_path / "b.arrow"
    buf.save(path)
    old = path.read_bytes()
    out = subprocess.run([sys.executable, "-c", _SAVE_PAST_THE_SIZE_LIMIT, str(path)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), timeout=60)
    assert "failed:" in out.stdout and "File too large" in out.stdout, out
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.arrow"]


# ------------------------------------------------------------------------------ threads
def test_concurrent_producers_never_tear_a_row():
    import sys

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # interleave the threads' bytecode finely (restored below)
    dim, cap = 64, 512
    buf = SampleBuffer(dim, capacity=cap)
    n_push_threads, n_ext_threads, batch = 3, 2, 40
    stop = threading.Event()
    errors: list[BaseException] = []
    pushed = [0] * (n_push_threads + n_ext_threads)

    def value(labels):  # every row's features, confidence and episode derive from its label
        return (np.asarray(labels) % 100_003).astype(np.float32) * np.float32(0.25)

    def pusher(t):
        try:
            i = 0
            while not stop.is_set() or i < 2000:
                label = t * 10_000_000 + i
                buf.push(np.full(dim, value(label), np.float32), label,
                         confidence=(label % 101) / 100.0, episode=label * 3)
                i += 1
            pushed[t] = i
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def extender(t):
        try:
            j = 0
            while not stop.is_set() or j < 50:
                labels = (t + 10) * 10_000_000 + j * batch + np.arange(batch)
                feats = np.repeat(value(labels)[:, None], dim, 1)
                buf.extend(feats, labels, confidences=(labels % 101) / 100.0, episodes=labels * 3)
                j += 1
            pushed[n_push_threads + t] = j * batch
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def check(snap):
        assert (snap.features == value(snap.labels)[:, None]).all(), "torn features row"
        np.testing.assert_array_equal(snap.confidence, ((snap.labels % 101) / 100.0).astype(np.float32))
        np.testing.assert_array_equal(snap.episode, snap.labels * 3)
        return len(snap)

    threads = [threading.Thread(target=pusher, args=(t,)) for t in range(n_push_threads)]
    threads += [threading.Thread(target=extender, args=(t,)) for t in range(n_ext_threads)]
    for th in threads:
        th.start()
    checked = 0
    try:
        for k in range(600):
            snap = buf.snapshot()
            if len(snap):  # a snapshot is a contiguous run of seqs
                np.testing.assert_array_equal(snap.seq, np.arange(snap.seq[0], snap.seq[0] + len(snap)))
                checked += check(snap) + check(buf.sample(64, k))
    finally:
        stop.set()
        for th in threads:
            th.join()
        sys.setswitchinterval(old_interval)
    assert not errors, errors
    assert buf.next_seq == sum(pushed) and len(buf) == cap
    assert check(buf.snapshot()) == cap
    assert checked > 100 * cap
    # each producer's rows appear in its own order
    final = buf.snapshot()
    for t in range(n_push_threads + n_ext_threads):
        mine = final.labels[final.labels // 10_000_000 == (t if t < n_push_threads else t - n_push_threads + 10)]
        assert (np.diff(mine) > 0).all()


def _write_unsealed(path, snap, metadata):
    """A file as Vortex wrote it before the sha256 seal: Arrow IPC, a CRC-32 in its metadata."""
    from vortex.training.buffer import _checksum

    full = {k.decode(): v.decode() for k, v in snap.schema(metadata).metadata.items()}
    batch = snap.to_arrow({**full, "vortex.crc32": _checksum(snap._arrays(), full)})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
        w.write_batch(batch)
    return batch


def test_files_written_before_the_seal_load_and_their_crc_is_checked(tmp_path):
    buf = SampleBuffer(2, capacity=8)
    buf.extend(rows(3, 2), np.arange(3))
    legacy = tmp_path / "legacy.arrow"
    batch = _write_unsealed(legacy, buf.snapshot(), {"vortex.next_seq": "3", "vortex.capacity": "8"})
    loaded = SampleBuffer.load(legacy)
    assert loaded.next_seq == 3 and loaded.capacity == 8
    assert_same(loaded.snapshot(), buf.snapshot())
    meta = dict(batch.schema.metadata)
    for key, value in ((b"vortex.capacity", b"800"), (b"vortex.next_seq", b"4")):
        forged = tmp_path / "forged.arrow"
        schema = batch.schema.with_metadata({**meta, key: value})
        with pa.OSFile(str(forged), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            w.write_batch(batch.replace_schema_metadata(schema.metadata))
        with pytest.raises(SnapshotFormatError, match="forged.arrow: data does not match its checksum"):
            SampleBuffer.load(forged)
    # an unsealed file must carry the older format's CRC: without it, nothing vouches for it
    bare = tmp_path / "bare.arrow"
    del meta[b"vortex.crc32"]
    with pa.OSFile(str(bare), "wb") as sink, pa.ipc.new_file(sink, batch.schema.with_metadata(meta)) as w:
        w.write_batch(batch.replace_schema_metadata(meta))
    with pytest.raises(SnapshotFormatError, match="bare.arrow: schema metadata incomplete"):
        SampleBuffer.load(bare)


def test_saved_metadata_round_trips_and_drop_older_than_keeps_the_numbering(tmp_path):
    buf = SampleBuffer(feature_dim=2, capacity=10)
    for i in range(8):
        buf.push(np.array([i, -i], np.float32), i % 2, timestamp=100.0 + i)
    path = tmp_path / "buf.arrow"
    buf.save(path, metadata={"app.note": "spool", "vortex.next_seq": "999"})  # the buffer's own keys win
    loaded = SampleBuffer.load(path)
    assert loaded.saved_metadata["app.note"] == "spool" and loaded.next_seq == 8
    assert SampleBuffer(2, 10).saved_metadata == {}
    assert buf.drop_older_than(5) == 5 and buf.drop_older_than(5) == 0
    snap = buf.snapshot()
    assert snap.seq.tolist() == [5, 6, 7] and snap.features[:, 0].tolist() == [5, 6, 7]
    assert snap.timestamp.tolist() == [105.0, 106.0, 107.0]
    assert buf.push(np.zeros(2, np.float32), 0) == 8  # numbering continues
    assert buf.drop_older_than(100) == 4 and len(buf) == 0 and buf.next_seq == 9
