"""WorkerSegment: its file, its argument checks (the in-process calls' own), close and fork."""

from __future__ import annotations

import math
import os
import stat

import numpy as np
import pytest

from vortex import RuntimeDetector
from vortex.shm import SegmentReader, WorkerSegment
from vortex.shm.location import SegmentDirError, parse_segment_name, segment_dir
from vortex.training import SampleBuffer


def test_the_segment_is_a_private_file_named_after_its_writer(home):
    with WorkerSegment.create(home, 4, window=32, ring_capacity=8) as seg:
        assert seg.path.parent == segment_dir(home)
        assert str(seg.path).startswith("/dev/shm/vortex-")
        pid, start, _ = parse_segment_name(seg.path.name)
        assert pid == os.getpid()
        with open(f"/proc/{pid}/stat") as fh:  # the kernel's start time of this process
            assert start == int(fh.read().rsplit(")", 1)[1].split()[19])
        st = os.stat(seg.path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(seg.path.parent).st_mode) == 0o700
        assert st.st_size == seg._writer.file_size
        assert os.listdir(seg.path.parent) == [seg.path.name]  # no temporary file left


def test_two_homes_never_share_a_directory_and_one_home_always_maps_to_one(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    os.symlink(a, tmp_path / "link")
    assert segment_dir(a) != segment_dir(b)
    assert segment_dir(tmp_path / "link") == segment_dir(a) == segment_dir(str(a) + "/.")


@pytest.mark.parametrize("kwargs, bad", [
    ({"feature_dim": 0}, "feature_dim=0"), ({"feature_dim": 2.0}, "feature_dim=2.0"),
    ({"feature_dim": True}, "feature_dim=True"), ({"window": 0}, "window=0"),
    ({"ring_capacity": -5}, "ring_capacity=-5"), ({"ring_capacity": 1 << 33}, "ring_capacity="),
    ({"label_dtype": "int32"}, "label_dtype='int32'")])
def test_bad_shapes_are_refused_naming_the_value(home, kwargs, bad):
    args = {"feature_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=bad):
        WorkerSegment.create(home, **args)
    assert not segment_dir(home).exists() or os.listdir(segment_dir(home)) == []


BAD_RECORDS = [(-1.0, 0.5), (math.nan, 0.5), (math.inf, 0.5), (1.0, 1.5), (1.0, -0.1),
               (1.0, math.nan), (True, 0.5), ("1", 0.5), (None, 0.5), (1.0, 0.5, -1.0),
               (1.0, 0.5, math.inf), (1.0, 0.5, "x"), (complex(1, 1), 0.5)]


@pytest.mark.parametrize("args", BAD_RECORDS)
def test_record_sample_refuses_what_the_detector_refuses_with_the_same_message(home, args):
    det = RuntimeDetector()
    with pytest.raises(ValueError) as in_process:
        det.record_sample(*args)
    with WorkerSegment.create(home, 3) as seg:
        with pytest.raises(ValueError) as shared:
            seg.record_sample(*args)
        assert str(shared.value) == str(in_process.value)
        assert seg.records == 0


def _push_cases():
    f = np.zeros(3, np.float32)
    return [((np.array([1, math.nan, 2], np.float32), 1), {}), ((np.zeros(4), 1), {}),
            ((np.zeros((1, 3)), 1), {}), ((["a", "b", "c"], 1), {}), ((f, 1.5), {}),
            ((f, True), {}), ((f, 1), {"confidence": 2.0}), ((f, 1), {"error": -0.5}),
            ((f, 1), {"episode": 1.5}), ((f, 1), {"timestamp": math.inf}),
            ((f, 1 << 64), {}), ((f, None), {}), ((np.zeros(3, complex), 1), {})]


@pytest.mark.parametrize("args, kwargs", _push_cases())
def test_push_refuses_what_the_sample_buffer_refuses_with_the_same_message(home, args, kwargs):
    buf = SampleBuffer(3, 8)
    with pytest.raises(ValueError) as in_process:
        buf.push(*args, **kwargs)
    with WorkerSegment.create(home, 3) as seg:
        with pytest.raises(ValueError) as shared:
            seg.push(*args, **kwargs)
        assert str(shared.value) == str(in_process.value)
        assert seg.samples == 0


def test_float_labels_and_every_accepted_input_kind(home):
    import torch

    with WorkerSegment.create(home, 3, label_dtype="float32") as seg:
        seg.record_sample(np.float32(2.5), np.float64(0.25), 0.5)
        seg.record_sample(3, 1)
        assert seg.push([1, 2, 3], 0.5) == 0
        assert seg.push(torch.tensor([1.0, 2.0, 3.0]), np.float32(1.5), episode=np.int64(4)) == 1
        with pytest.raises(ValueError, match="label=nan"):
            seg.push([1, 2, 3], math.nan)
        reader = SegmentReader(seg.path)
        assert reader.read_metrics().latency_ms.tolist() == [2.5, 3.0]
        rows = reader.read_samples()
        assert rows.labels.dtype == np.float32 and rows.labels.tolist() == [0.5, 1.5]
        assert rows.episode.tolist() == [0, 4]
        reader.close()


def test_close_marks_a_clean_exit_and_refuses_later_calls(home):
    seg = WorkerSegment.create(home, 2)
    seg.record_sample(1.0, 0.5)
    assert seg.attached and not seg.closed
    seg.close()
    assert seg.closed and not seg.attached  # attached: the middleware's check before recording
    with pytest.raises(ValueError, match="closed"):
        seg.record_sample(1.0, 0.5)
    with pytest.raises(ValueError, match="closed"):
        seg.push([1.0, 2.0], 1)
    seg.close()  # idempotent
    with SegmentReader(seg.path) as reader:
        assert not reader.alive()
        assert reader.counters() == (1, 0, True)


def test_a_forked_child_cannot_write_its_parents_segment(home):
    seg = WorkerSegment.create(home, 2)
    seg.record_sample(1.0, 0.5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: every write refused, the parent's lock untouched
        code = 1
        try:
            try:
                seg.record_sample(2.0, 0.5)
            except ValueError as exc:
                code = 0 if "forked" in str(exc) and seg.closed and not seg.attached else 2
            os.write(w, b"x")
        finally:
            os._exit(code)
    os.close(w)
    os.read(r, 1)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 0
    assert seg.attached
    seg.record_sample(3.0, 0.5)  # the parent still writes, and still holds the lock
    with SegmentReader(seg.path) as reader:
        assert reader.alive()
        assert reader.read_metrics().latency_ms.tolist() == [1.0, 3.0]
    seg.close()


def test_a_directory_someone_else_could_control_is_refused(home):
    directory = segment_dir(home)
    os.symlink("/tmp", directory)
    try:
        with pytest.raises(SegmentDirError, match="symlink"):
            WorkerSegment.create(home, 2)
    finally:
        os.unlink(directory)
    os.mkdir(directory, 0o777)
    os.chmod(directory, 0o777)
    with pytest.raises(SegmentDirError, match="writable by group or others"):
        WorkerSegment.create(home, 2)


def test_without_dev_shm_the_segments_go_under_the_home(home, monkeypatch):
    import vortex.shm.location as location

    monkeypatch.setattr(location, "SHM_ROOT", str(home / "no-such-dir"))
    assert segment_dir(home) == home.resolve() / "shm"
    with WorkerSegment.create(home, 2) as seg:
        seg.record_sample(1.0, 0.5)
        assert seg.path.parent == home.resolve() / "shm"
    with SegmentReader(seg.path) as reader:
        assert reader.read_metrics().latency_ms.tolist() == [1.0]
