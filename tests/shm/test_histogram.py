"""The bucket scheme and LogHistogram, against the slow NumPy twins in tests/naive.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from vortex.shm.histogram import (BOUNDS, CONFIDENCE_LE, LATENCY_LE_SECONDS, N_BUCKETS,
                                  RELATIVE_ERROR, LogHistogram, bucket_indices)

positive = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
value_lists = st.lists(positive, max_size=200)


def test_bounds_are_the_decimals_they_stand_for():
    np.testing.assert_array_equal(BOUNDS, naive.log_bucket_bounds())
    assert N_BUCKETS == len(BOUNDS) + 1 == 812
    assert np.all(np.diff(BOUNDS) > 0)
    # each bucket is 1% to 10% wide relative to its lower bound: the quantile error bound
    widths = np.diff(BOUNDS) / BOUNDS[:-1]
    assert widths.max() <= 0.1 + 1e-12 and widths.min() >= 1 / 99 - 1e-12


def test_every_boundary_and_its_neighbours_land_in_the_right_bucket():
    near = np.concatenate([BOUNDS, np.nextafter(BOUNDS, 0), np.nextafter(BOUNDS, np.inf)])
    np.testing.assert_array_equal(bucket_indices(near), np.searchsorted(naive.log_bucket_bounds(), near))


@given(value_lists)
def test_bucket_index_matches_the_naive_search(values):
    arr = np.array(values, dtype=np.float64)
    np.testing.assert_array_equal(bucket_indices(arr), np.searchsorted(naive.log_bucket_bounds(), arr))


def test_dense_log_sweep_matches_the_naive_search():
    arr = 10.0 ** np.random.default_rng(0).uniform(-8, 4, 200_000)
    np.testing.assert_array_equal(bucket_indices(arr), np.searchsorted(naive.log_bucket_bounds(), arr))


def test_edges_zero_and_overflow():
    assert bucket_indices([0.0, 1e-6, 1e-300])[:].tolist() == [0, 0, 0]
    assert bucket_indices([1e3, np.nextafter(1e3, np.inf), 1e300]).tolist() == [810, 811, 811]


@given(value_lists, value_lists)
def test_merge_is_the_histogram_of_the_union(a, b):
    merged = LogHistogram.of(a) + LogHistogram.of(b)
    union = LogHistogram.of(a + b)
    np.testing.assert_array_equal(merged.counts, union.counts)
    np.testing.assert_array_equal(merged.counts, naive.log_histogram(a + b))
    assert merged.count == len(a) + len(b)
    assert merged.total == pytest.approx(sum(a) + sum(b), rel=1e-12, abs=1e-300)


@settings(max_examples=300)
@given(st.lists(st.floats(min_value=1.0000001e-6, max_value=1e3), min_size=1, max_size=300),
       st.floats(min_value=0.0, max_value=1.0))
def test_quantile_is_within_the_documented_error(values, q):
    est = LogHistogram.of(values).quantile(q)
    true = naive.nearest_rank_quantile(values, q)
    assert abs(est - true) <= RELATIVE_ERROR * true * (1 + 1e-12)


def test_quantile_edges():
    assert math.isnan(LogHistogram().quantile(0.5))
    assert LogHistogram.of([0.0, 0.0]).quantile(0.5) == BOUNDS[0]
    assert LogHistogram.of([5e3]).quantile(0.99) == math.inf
    assert LogHistogram.of([1.0, 2.0]).quantile(0.0) == pytest.approx(1.0, rel=RELATIVE_ERROR)
    assert LogHistogram.of([1.0, 2.0]).quantile(1.0) == pytest.approx(2.0, rel=RELATIVE_ERROR)
    for bad in (-0.1, 1.5, math.nan, "0.5", True):
        with pytest.raises(ValueError, match="q="):
            LogHistogram().quantile(bad)


@pytest.mark.parametrize("le", [LATENCY_LE_SECONDS, CONFIDENCE_LE])
def test_prometheus_bucket_sets_are_exact_prefix_sums(le):
    values = np.random.default_rng(1).uniform(0, 1.2, 5000) ** 3 * 12
    cum = LogHistogram.of(values).cumulative([*le, math.inf])
    expected = [int((values <= bound).sum()) for bound in le] + [len(values)]
    assert cum.tolist() == expected


def test_cumulative_refuses_a_bound_that_is_not_one():
    with pytest.raises(ValueError, match="le=0.123"):
        LogHistogram().cumulative([0.123])


def test_json_round_trip_and_refusals():
    h = LogHistogram.of([0.001, 0.5, 0.5, 2000.0])
    assert LogHistogram.from_json(h.to_json()) == h
    for bad in ({"counts": {"812": 1}, "total": 0.0}, {"counts": {"3": -1}, "total": 0.0},
                {"counts": {"3": 1.5}, "total": 0.0}, {"counts": {}, "total": "x"}):
        with pytest.raises(ValueError):
            LogHistogram.from_json(bad)


def test_counts_are_checked():
    with pytest.raises(ValueError, match="812 non-negative integers"):
        LogHistogram(np.zeros(5))
    with pytest.raises(ValueError):
        LogHistogram(-np.ones(N_BUCKETS, dtype=np.int64))
