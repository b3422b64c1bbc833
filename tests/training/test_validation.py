"""Paired-bootstrap validation of candidate vs active."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vortex.training.validation import compare_models, should_swap


def _cls(c, a, **kw):
    return compare_models(np.asarray(c), np.asarray(a), task="classification", candidate_loss=0.1,
                          active_loss=0.2, **kw)


def test_clear_improvement_swaps():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.70).astype(float)
    c = np.maximum(a, (rng.random(2000) < 0.3).astype(float))  # fixes ~30% of active's errors
    r = _cls(c, a)
    assert r.improvement_pct == pytest.approx(100 * (c.mean() - a.mean()) / a.mean())
    assert r.ci_low > 0 and r.ci_low < r.improvement_pct < r.ci_high
    assert should_swap(r, 2.0) and r.n == 2000 and r.candidate_accuracy == c.mean()


def test_lucky_small_holdout_does_not_swap():
    # 6 samples, candidate right on one more: +25 % but the interval includes 0
    a = np.array([1, 1, 1, 1, 0, 0], float)
    c = np.array([1, 1, 1, 1, 1, 0], float)
    r = _cls(c, a)
    assert r.improvement_pct == pytest.approx(25.0) and r.ci_low <= 0
    assert not should_swap(r, 2.0)


def test_worse_candidate_and_threshold():
    a = np.ones(500)
    c = np.r_[np.zeros(50), np.ones(450)]
    assert not should_swap(_cls(c, a), 0.0)
    r = _cls(a, c)  # +11 %, certain (every difference favours the candidate)
    assert r.ci_low > 0 and should_swap(r, 10.0) and not should_swap(r, 12.0)


def test_regression_lower_error_is_better():
    rng = np.random.default_rng(1)
    a = rng.random(1000) * 2
    c = a * 0.5
    r = compare_models(c, a, task="regression", candidate_loss=c.mean(), active_loss=a.mean())
    assert r.improvement_pct == pytest.approx(50.0) and r.ci_low > 40 and np.isnan(r.active_accuracy)


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 samples"):
        _cls(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="no held-out"):
        _cls(np.ones(0), np.ones(0))
    with pytest.raises(ValueError, match="task"):
        compare_models(np.ones(3), np.ones(3), task="ranking", candidate_loss=0, active_loss=0)
    with pytest.raises(ValueError, match="confidence_level"):
        _cls(np.ones(3), np.ones(3), confidence_level=1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60), st.integers(0, 5))
def test_interval_sign_follows_paired_dominance(pairs, seed):
    c = np.array([p[0] for p in pairs], float)
    a = np.array([p[1] for p in pairs], float)
    r = _cls(c, a, seed=seed, resamples=200)
    assert r.ci_low <= r.ci_high
    if np.all(c >= a):  # the candidate is never worse on any sample: no resample can favour active
        assert r.ci_low >= 0
    if np.all(c <= a):
        assert r.ci_high <= 0
    if np.array_equal(c, a):
        assert r.improvement_pct == 0 and r.ci_low == 0 == r.ci_high
