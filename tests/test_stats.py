"""vortex.stats against SciPy on known data."""

from __future__ import annotations

import numpy as np
import pytest

from vortex.stats import paired_bootstrap_interval, student_t_interval, t_quantile

stats = pytest.importorskip("scipy.stats", reason="scipy (the test extra) is the reference")


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 7, 10, 30, 100, 999, 5000])
@pytest.mark.parametrize("p", [0.025, 0.9, 0.95, 0.975, 0.995])
def test_t_quantile_matches_scipy(p, df):
    assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_student_t_interval_matches_scipy(confidence):
    # benchmark-like paired differences: relative deltas of five interleaved runs
    diffs = [0.031, -0.012, 0.054, 0.027, 0.008]
    mean, lo, hi = student_t_interval(diffs, confidence)
    ref = stats.t.interval(confidence, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert mean == pytest.approx(np.mean(diffs), rel=1e-12)
    assert (lo, hi) == pytest.approx(ref, rel=1e-9)


def test_student_t_interval_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="at least 2"):
        student_t_interval([1.0], 0.95)
    with pytest.raises(ValueError, match="confidence=1.0"):
        student_t_interval([1.0, 2.0], 1.0)
    with pytest.raises(ValueError, match="p=1.0"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df=0"):
        t_quantile(0.9, 0)


def _relative_improvement(x_mean, y_mean):
    return 100.0 * (x_mean - y_mean) / y_mean


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_paired_bootstrap_matches_scipy(confidence):
    # a held-out set of 300 samples scored 0/1 by two models that agree on most of them
    rng = np.random.default_rng(7)
    active = (rng.random(300) < 0.72).astype(float)
    candidate = np.maximum(active, (rng.random(300) < 0.15).astype(float))
    candidate[rng.choice(300, 8, replace=False)] = 0.0
    lo, hi = paired_bootstrap_interval(candidate, active, _relative_improvement,
                                       confidence=confidence, resamples=20_000, seed=1)
    ref = stats.bootstrap((candidate, active),
                          lambda x, y, axis: _relative_improvement(x.mean(axis), y.mean(axis)),
                          paired=True, vectorized=True, method="percentile",
                          confidence_level=confidence, n_resamples=20_000,
                          random_state=np.random.default_rng(2)).confidence_interval
    # Two Monte-Carlo estimates of the same quantiles: the interval is ~8 points wide, the
    # endpoints' sampling error at 20,000 resamples a few tenths of a point.
    assert lo == pytest.approx(ref.low, abs=0.6) and hi == pytest.approx(ref.high, abs=0.6)
    # a bootstrap of independent samples (the pairing dropped) is clearly wider
    unpaired = stats.bootstrap((candidate, active),
                               lambda x, y, axis: _relative_improvement(x.mean(axis), y.mean(axis)),
                               paired=False, vectorized=True, method="percentile",
                               confidence_level=confidence, n_resamples=5_000,
                               random_state=np.random.default_rng(3)).confidence_interval
    assert unpaired.high - unpaired.low > 1.5 * (hi - lo)


def test_paired_bootstrap_is_reproducible_and_checks_its_inputs():
    x, y = np.arange(10.0) + 1, np.arange(10.0) + 2
    first = paired_bootstrap_interval(x, y, _relative_improvement, seed=3)
    assert first == paired_bootstrap_interval(x, y, _relative_improvement, seed=3)
    with pytest.raises(ValueError, match="10 and 9"):
        paired_bootstrap_interval(x, y[:9], _relative_improvement)
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_interval(x[:0], y[:0], _relative_improvement)
    with pytest.raises(ValueError, match="resamples=99"):
        paired_bootstrap_interval(x, y, _relative_improvement, resamples=99)
    with pytest.raises(ValueError, match="confidence=0"):
        paired_bootstrap_interval(x, y, _relative_improvement, confidence=0)
