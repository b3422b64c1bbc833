"""vortex._fast_serving: the per-request helpers of Orchestrator.infer, against NumPy."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import naive
from vortex import Prediction
from vortex._fast_serving import build, features_f32, softmax_top, softmax_top_tensor

finite = st.floats(-80, 80, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(arrays(st.sampled_from([np.float32, np.float64]), st.integers(1, 40), elements=finite))
def test_softmax_top_matches_numpy(logits):
    cls, conf, probs = softmax_top(logits)
    k, p_max, p = naive.softmax_top(logits)
    assert type(probs) is tuple and len(probs) == logits.size
    np.testing.assert_allclose(probs, p, rtol=1e-12, atol=1e-300)
    assert conf == probs[cls] == max(probs)
    assert probs[cls] == pytest.approx(p_max, rel=1e-12)
    assert cls == probs.index(max(probs))  # the first maximum, as argmax
    assert math.isclose(sum(probs), 1.0, rel_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float32, st.tuples(st.just(1), st.integers(1, 20)), elements=finite))
def test_softmax_top_tensor_reads_the_tensor_in_place(logits):
    assert softmax_top_tensor(torch.from_numpy(logits), torch.float32, torch.strided) == softmax_top(logits)


def test_softmax_top_ties_pick_the_first():
    assert softmax_top(np.array([1.0, 3.0, 3.0], np.float32))[0] == 1


@pytest.mark.parametrize("logits", [
    np.array([1.0, np.nan], np.float32), np.array([np.inf, 0.0]), np.zeros(0, np.float32),
    np.zeros(3, np.int64), np.zeros(3, np.float16), np.zeros((3, 2), np.float32)[:, 0],
    [0.0, 1.0], "ab",
])
def test_softmax_top_declines_what_it_cannot_answer(logits):
    assert softmax_top(logits) is None


@pytest.mark.parametrize("tensor", [
    torch.zeros(1, 3, dtype=torch.float64), torch.zeros(0), torch.zeros(3, 2)[:, 0],
    torch.tensor([0.0, math.nan]), torch.zeros(3).to_sparse(),
])
def test_softmax_top_tensor_declines_what_it_cannot_answer(tensor):
    assert softmax_top_tensor(tensor, torch.float32, torch.strided) is None


def test_softmax_top_2d_is_flattened():
    z = np.array([[0.5, 2.0, -1.0]], np.float32)
    assert softmax_top(z)[2] == softmax_top(z[0])[2]


def test_features_f32_returns_the_same_object_only_when_usable():
    x = np.arange(4, dtype=np.float32)
    assert features_f32(x, 4) is x
    for bad in (x.astype(np.float64), x[::2], x.reshape(2, 2), np.array([0, 1, math.nan, 2], np.float32),
                np.array([0, 1, math.inf, 2], np.float32), [0.0, 1.0, 2.0, 3.0], torch.zeros(4)):
        assert features_f32(bad, 4) is None
    assert features_f32(x, 5) is None


def test_build_makes_an_equal_frozen_dataclass():
    values = (7, 2, 0.5, (0.25, 0.25, 0.5), "fast", None, 0.125)
    fast = build(Prediction, tuple(f.name for f in dataclasses.fields(Prediction)), values)
    assert fast == Prediction(*values) and hash(fast) == hash(Prediction(*values))
    assert repr(fast) == repr(Prediction(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.confidence = 1.0


def test_softmax_top_many_classes_beyond_the_stack_buffer():
    z = np.random.default_rng(3).normal(size=1000).astype(np.float32)
    cls, conf, probs = softmax_top(z)
    k, p_max, p = naive.softmax_top(z)
    assert cls == k and conf == pytest.approx(p_max, rel=1e-12)
    np.testing.assert_allclose(probs, p, rtol=1e-12)


def test_prediction_built_fast_pickles_and_converts_like_a_dataclass():
    import pickle

    values = (7, 2, 0.5, (0.25, 0.25, 0.5), "fast", 3, 0.125)
    fast = build(Prediction, tuple(f.name for f in dataclasses.fields(Prediction)), values)
    assert pickle.loads(pickle.dumps(fast)) == fast
    assert dataclasses.astuple(fast) == values
    assert dataclasses.replace(fast, mode="thorough").mode == "thorough"
