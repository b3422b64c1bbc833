"""Raw tests of the compiled bindings (vortex._core and the Cython fast paths)."""

import numpy as np
import pytest

from vortex import _core, _fast_ring


# ------------------------------------------------------------------------------ SampleRing
def test_sample_ring_construction_and_properties():
    r = _core.SampleRing(3, 5, 0)
    assert (r.feature_dim, r.capacity, r.label_kind, r.next_seq, len(r)) == (3, 5, 0, 0, 0)
    assert r.nbytes >= 5 * (3 * 4 + 8 + 4 + 4 + 8 + 8)
    assert isinstance(r._address(), int) and r._address() != 0
    assert _core.SampleRing(2, 2, 1, next_seq=7).next_seq == 7
    for args in ((0, 5, 0), (3, 0, 0), (3, 5, 2)):
        with pytest.raises(ValueError):
            _core.SampleRing(*args)
    with pytest.raises(ValueError, match="next_seq"):
        _core.SampleRing(2, 2, 0, next_seq=-1)


def test_sample_ring_replace_snapshot_sample_clear():
    r = _core.SampleRing(2, 4, 0)
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    r.replace(feats, np.array([7, 8, 9]), np.ones(3, np.float32), np.zeros(3, np.float32),
              np.arange(3.0), np.array([1, 1, 2]), 10)
    assert len(r) == 3 and r.next_seq == 10
    f, lab, conf, err, ts, seq, ep, next_seq = r.snapshot(10)
    np.testing.assert_array_equal(f, feats)
    assert lab.tolist() == [7, 8, 9] and seq.tolist() == [7, 8, 9] and ep.tolist() == [1, 1, 2]
    assert next_seq == 10
    assert r.snapshot(1)[5].tolist() == [9]
    s = r.sample_uniform(np.array([0.0, 0.5, 0.999999]))
    assert s[5].tolist() == [7, 8, 9] and s[1].tolist() == [7, 8, 9] and len(s) == 7
    r.clear()
    assert len(r) == 0 and r.next_seq == 10
    with pytest.raises(ValueError, match="empty"):
        r.sample_uniform(np.array([0.5]))
    assert r.sample_uniform(np.zeros(0))[0].shape == (0, 2)


def test_sample_ring_replace_validates_and_changes_nothing():
    r = _core.SampleRing(2, 3, 0)
    r.replace(np.ones((1, 2), np.float32), np.array([1]), np.ones(1, np.float32),
              np.zeros(1, np.float32), np.zeros(1), np.zeros(1, np.int64), 1)
    good = dict(features=np.ones((2, 2), np.float32), labels=np.array([1, 2]),
                confidence=np.ones(2, np.float32), error=np.zeros(2, np.float32),
                timestamp=np.zeros(2), episode=np.zeros(2, np.int64), next_seq=5)
    for change, needle in (({"features": np.ones((4, 2), np.float32), "labels": np.arange(4),
                             "confidence": np.ones(4, np.float32), "error": np.zeros(4, np.float32),
                             "timestamp": np.zeros(4), "episode": np.zeros(4, np.int64)}, "capacity"),
                           ({"labels": np.array([1.0, 2.0], np.float32)}, "dtype"),
                           ({"confidence": np.ones(3, np.float32)}, "rows"),
                           ({"features": np.ones((2, 3), np.float32)}, "feature_dim"),
                           ({"next_seq": 1}, "next_seq"),
                           ({"error": np.array([0.5, 2.0], np.float32)}, r"errors\[1\]")):
        with pytest.raises(ValueError, match=needle):
            r.replace(**{**good, **change})
        assert len(r) == 1 and r.next_seq == 1


def test_fast_ring_writer_needs_attach():
    w = _fast_ring.SampleRingWriter()
    with pytest.raises(RuntimeError, match="not initialised"):
        w.push([1.0], 1)


def test_fast_ring_writer_drives_the_pybind_object():
    r = _core.SampleRing(2, 4, 1)
    w = _fast_ring.SampleRingWriter()
    w._attach(r, True)
    del r  # the writer keeps the owner alive
    assert w.push(np.array([1, 2], np.float32), 0.5) == 0
    assert w.extend(np.ones((2, 2), np.float32), np.array([1.5, 2.5], np.float32)) == 1
