import dataclasses

import naive
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vortex.config import FluxConfig
from vortex.errors import ConfigError
from vortex.kernels import flux as kernel
from vortex.training import FluxDynamics, FluxWeights, SampleBuffer


def compare(seq, episode, error, config: FluxConfig):
    got = FluxDynamics(config).compute({"seq": seq, "episode": episode, "error": error})
    want = naive.flux_weights(seq, episode, error, **dataclasses.asdict(config))
    np.testing.assert_allclose(got.weights, want[0], rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(got.positions, want[1])
    np.testing.assert_array_equal(got.train_mask, want[2])
    np.testing.assert_array_equal(got.holdout_mask, want[3])
    return got


@st.composite
def snapshots(draw, max_n=400, ordered=True):
    n = draw(st.integers(0, max_n))
    start = draw(st.integers(0, 10**12))
    gaps = draw(st.sampled_from(["none", "some"]))
    steps = np.ones(n, np.int64)
    if gaps == "some" and n:
        idx = draw(st.lists(st.integers(0, n - 1), max_size=5))
        steps[idx] = draw(st.integers(2, 40))
    seq = start + np.cumsum(steps) - 1
    if not ordered and n:
        seq = seq[np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(n)]
    # episodes: runs of random lengths, sometimes one long episode
    run = draw(st.integers(1, 50))
    episode = (np.arange(n) // run).astype(np.int64) * draw(st.sampled_from([1, -3, 7]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    error = rng.random(n).astype(np.float32)
    error[rng.random(n) < draw(st.floats(0, 1))] = np.nan
    if n and draw(st.booleans()):
        error[rng.random(n) < 0.3] = draw(st.sampled_from([0.0, 1.0]))
    return seq, episode, error


configs = st.builds(
    FluxConfig,
    half_life=st.floats(0.5, 1e6),
    gamma=st.floats(0, 1),
    lam=st.floats(0, 20),
    w_max=st.floats(0.05, 50),
    holdout_positions=st.lists(st.integers(1, 9), max_size=8, unique=True).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(snapshots(), configs)
def test_matches_reference_and_properties(snap, config):
    seq, episode, error = snap
    fw = compare(seq, episode, error, config)
    assert len(fw) == len(seq)
    assert fw.weights.dtype == np.float32 and fw.positions.dtype == np.int8
    assert (fw.weights >= 0).all()
    assert (fw.weights[fw.holdout_mask] == 0).all()
    assert (fw.train_mask == ~fw.holdout_mask).all()
    assert ((fw.positions >= 1) & (fw.positions <= 9)).all()
    np.testing.assert_array_equal(fw.positions, 1 + seq % 9)
    if fw.train_mask.any():
        assert fw.weights[fw.train_mask].mean() == pytest.approx(1.0, rel=1e-4)


@settings(max_examples=60, deadline=None)
@given(snapshots(max_n=200, ordered=False), configs)
def test_out_of_order_snapshots_match_reference(snap, config):
    compare(*snap, config)


def test_multiple_blocks_and_block_edges():
    rng = np.random.default_rng(0)
    for n in (kernel._BLOCK - 1, kernel._BLOCK, kernel._BLOCK + 1, 2 * kernel._BLOCK + 3, 50_000):
        seq = np.arange(n, dtype=np.int64) + 5
        episode = np.cumsum(rng.random(n) < 0.02)
        error = rng.random(n).astype(np.float32)
        error[rng.random(n) < 0.2] = np.nan
        compare(seq, episode, error, FluxConfig(half_life=500.0, gamma=0.95, lam=2.0, w_max=4.0))
        # a gap in the middle of a block
        seq2 = seq.copy()
        seq2[n // 2:] += 1000
        compare(seq2, episode, error, FluxConfig(half_life=500.0))


def test_episode_reset_cuts_the_backward_chain():
    # errors only after the boundary: samples before it get no error credit
    seq = np.arange(10, 19)  # positions 2..9, 1 -> choose no holdout to see every weight
    episode = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    error = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1], np.float32)
    cfg = FluxConfig(half_life=1e12, gamma=0.5, lam=1.0, w_max=100.0, holdout_positions=())
    fw = FluxDynamics(cfg).compute({"seq": seq, "episode": episode, "error": error})
    w = fw.weights / fw.weights[0]
    np.testing.assert_allclose(w[:4], 1.0, rtol=1e-6)  # no credit across the reset
    # within episode 1: b = 1 + 0.5 b_next from the end: 1, 1.5, 1.75, 1.875, 1.9375
    np.testing.assert_allclose(w[4:], 1 + np.array([1.9375, 1.875, 1.75, 1.5, 1.0]), rtol=1e-6)
    same = FluxDynamics(cfg).compute({"seq": seq, "episode": np.zeros(9, np.int64), "error": error})
    assert same.weights[3] > same.weights[0]  # without the reset, credit flows back


def test_hand_computed_example():
    seq = np.arange(0, 9)  # positions 1..9
    error = np.array([0.5, np.nan, 0, 0, 0, 0, 0, 0, 1.0], np.float32)
    cfg = FluxConfig(half_life=2.0, gamma=0.5, lam=2.0, w_max=10.0, holdout_positions=(3, 6, 9))
    fw = FluxDynamics(cfg).compute({"seq": seq, "episode": np.zeros(9, np.int64), "error": error})
    f = 0.5 ** ((8 - seq) / 2.0)
    b = np.zeros(9)
    acc = 0.0
    for i in range(8, -1, -1):
        e = 0.0 if np.isnan(error[i]) else error[i]
        acc = e + 0.5 * acc
        b[i] = acc
    raw = f * (1 + 2 * b)
    held = np.isin(seq % 9 + 1, (3, 6, 9))
    raw[held] = 0
    expected = raw / raw[~held].mean()
    np.testing.assert_allclose(fw.weights, expected, rtol=1e-6)
    assert fw.holdout_mask.tolist() == held.tolist() and fw.n_holdout == 3 and fw.n_train == 6


def test_clipping_then_normalisation():
    seq = np.arange(1, 5)  # positions 2..5, none held out with holdout_positions=(9,)
    error = np.ones(4, np.float32)
    cfg = FluxConfig(half_life=1e9, gamma=1.0, lam=10.0, w_max=5.0, holdout_positions=(9,))
    fw = FluxDynamics(cfg).compute({"seq": seq, "episode": np.zeros(4, np.int64), "error": error})
    # raw: 1 + 10 * (4, 3, 2, 1) = 41, 31, 21, 11 -> all clipped at 5 -> equal -> 1 each
    np.testing.assert_allclose(fw.weights, 1.0, rtol=1e-6)


def test_underflowed_recency_gives_uniform_trained_weights():
    seq = np.array([0, 1, 10**6])  # the only trained rows are ~1e6 half-lives old
    cfg = FluxConfig(half_life=1.0, holdout_positions=(2,))
    fw = FluxDynamics(cfg).compute({"seq": seq, "episode": np.zeros(3, np.int64),
                                    "error": np.zeros(3, np.float32)})
    # positions 1, 2, 2 (10**6 % 9 == 1): only row 0 is trained, and its recency underflows
    assert fw.holdout_mask.tolist() == [False, True, True]
    assert fw.weights.tolist() == [1.0, 0.0, 0.0]


def test_all_held_out_and_empty():
    cfg = FluxConfig(holdout_positions=(1, 2, 3, 4, 5, 6, 7, 8))
    fw = FluxDynamics(cfg).compute({"seq": np.arange(0, 18, 9), "episode": np.zeros(2, np.int64),
                                    "error": np.zeros(2, np.float32)})
    assert fw.weights.tolist() == [0.0, 0.0] and fw.n_train == 0
    empty = FluxDynamics().compute({"seq": np.zeros(0, np.int64), "episode": np.zeros(0, np.int64),
                                    "error": np.zeros(0, np.float32)})
    assert len(empty) == 0 and isinstance(empty, FluxWeights)


def test_compute_from_a_buffer_snapshot():
    buf = SampleBuffer(4, capacity=100)
    rng = np.random.default_rng(2)
    buf.extend(rng.random((150, 4)), rng.integers(0, 3, 150), errors=rng.random(150),
               episodes=np.arange(150) // 10)
    snap = buf.snapshot()
    fw = FluxDynamics().compute(snap)
    want = naive.flux_weights(snap.seq, snap.episode, snap.error, **dataclasses.asdict(FluxConfig()))
    np.testing.assert_allclose(fw.weights, want[0], rtol=1e-5)
    np.testing.assert_array_equal(fw.positions, 1 + snap.seq % 9)
    # held-out rows are exactly the sacred positions 3, 6, 9
    assert set(fw.positions[fw.holdout_mask].tolist()) == {3, 6, 9}


@pytest.mark.parametrize("data,needle", [
    ({"seq": [0, 1], "episode": [0, 0], "error": [0.1, 1.5]}, r"error\[1\]"),
    ({"seq": [0, 1], "episode": [0, 0], "error": [-0.1, 0.5]}, r"error\[0\]"),
    ({"seq": [0, -1], "episode": [0, 0], "error": [0.1, 0.5]}, r"seq\[1\]=-1"),
    ({"seq": [0, 1], "episode": [0], "error": [0.1, 0.5]}, "lengths differ"),
    ({"seq": [0.5, 1], "episode": [0, 0], "error": [0.1, 0.5]}, "seq: dtype float64"),
    ({"seq": [0, 1], "episode": [0, 0], "error": ["a", "b"]}, "error: dtype"),
    ({"seq": [[0, 1]], "episode": [[0, 0]], "error": [[0.1, 0.5]]}, "not 1-D"),
    ({"seq": [0, 1], "episode": [0, 0]}, "'error' column"),
])
def test_bad_input(data, needle):
    with pytest.raises(ValueError, match=needle):
        FluxDynamics().compute(data)


def test_out_arrays_are_filled_in_place_and_checked():
    seq = np.arange(100)
    out = (np.empty(100, np.float32), np.empty(100, np.int8), np.empty(100, bool), np.empty(100, bool))
    res = kernel.flux_weights(seq, seq // 7, np.full(100, 0.3, np.float32), half_life=50.0,
                              gamma=0.9, lam=1.0, w_max=10.0, holdout_positions=(3, 6, 9), out=out)
    assert all(a is b for a, b in zip(res, out))
    with pytest.raises(ValueError, match="out:"):
        kernel.flux_weights(seq, seq, np.zeros(100, np.float32), half_life=1.0, gamma=0.5, lam=1.0,
                            w_max=1.0, holdout_positions=(), out=(np.empty(100),) * 4)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="half_life"):
        FluxConfig(half_life=0)
    with pytest.raises(ConfigError, match="holdout_positions"):
        FluxConfig(holdout_positions=(0,))
    with pytest.raises(TypeError):
        FluxDynamics({"half_life": 3})


def test_warmup_runs():
    kernel.warmup()
