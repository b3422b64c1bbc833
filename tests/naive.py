"""Slow, obviously correct NumPy twins of the compiled kernels (tests compare against them)."""

from __future__ import annotations

import numpy as np


def flux_weights(seq, episode, error, *, half_life, gamma, lam, w_max, holdout_positions):
    """DESIGN.md's FluxDynamics, literally: returns (weights, positions, train_mask, holdout_mask).

    Conventions shared with vortex.kernels.flux: NaN error counts as 0; forward factors below
    the smallest normal double are 0; if every trained raw weight is 0, trained weights are 1.
    """
    seq = np.asarray(seq, np.int64)
    episode = np.asarray(episode, np.int64)
    e = np.nan_to_num(np.asarray(error, np.float64), nan=0.0)
    n = len(seq)
    positions = (1 + seq % 9).astype(np.int8)
    holdout = np.isin(positions, list(holdout_positions))
    if n == 0:
        return np.zeros(0, np.float32), positions, ~holdout, holdout
    f = 0.5 ** ((seq.max() - seq) / half_life)
    f[f < np.finfo(np.float64).tiny] = 0.0
    b = np.zeros(n)
    for i in range(n - 1, -1, -1):
        if i + 1 < n and episode[i + 1] == episode[i]:
            b[i] = e[i] + gamma * b[i + 1]
        else:
            b[i] = e[i]
    w = np.minimum(f * (1 + lam * b), w_max)
    w[holdout] = 0.0
    trained = ~holdout
    if trained.any():
        total = w[trained].sum()
        if total > 0:
            w = w * (trained.sum() / total)
        else:
            w = trained.astype(np.float64)
    return w.astype(np.float32), positions, trained, holdout


def window_stats(latency: np.ndarray, confidence: np.ndarray, error: np.ndarray,
                 threshold: float, recent: int = 10, min_baseline: int = 20) -> dict:
    """Statistics of a metric window given oldest -> newest, as vortex::MetricWindow::analyze.

    recent = the newest ``recent`` samples (for errors: the newest ``recent`` samples that have
    ground truth); baseline = the older half once the window holds
    at least ``min_baseline`` samples; error NaN = no ground truth.
    """
    n = len(latency)
    nan = float("nan")
    out: dict = {"size": n}
    if n == 0:
        return {**out, "recent_count": 0, "recent_latency_mean": nan, "recent_latency_max": nan,
                "recent_over_threshold": 0, "recent_over_latency_mean": nan,
                "recent_confidence_mean": nan, "recent_error_count": 0, "recent_error_mean": nan,
                "baseline_count": 0, "baseline_latency_mean": nan,
                "baseline_confidence_mean": nan, "baseline_error_count": 0,
                "baseline_error_mean": nan}
    r = slice(max(0, n - recent), n)
    rl, rc = latency[r], confidence[r]
    over = rl[rl > threshold]
    known = error[~np.isnan(error)][-recent:]  # the newest ``recent`` samples with ground truth
    out.update(
        recent_count=len(rl),
        recent_latency_mean=rl.mean(),
        recent_latency_max=rl.max(),
        recent_over_threshold=len(over),
        recent_over_latency_mean=over.mean() if len(over) else np.nan,
        recent_confidence_mean=rc.mean(),
        recent_error_count=len(known),
        recent_error_mean=known.mean() if len(known) else np.nan,
    )
    if n >= min_baseline:
        b = slice(0, n // 2)
        be = error[b][~np.isnan(error[b])]
        out.update(
            baseline_count=n // 2,
            baseline_latency_mean=latency[b].mean(),
            baseline_confidence_mean=confidence[b].mean(),
            baseline_error_count=len(be),
            baseline_error_mean=be.mean() if len(be) else np.nan,
        )
    else:
        out.update(baseline_count=0, baseline_latency_mean=np.nan,
                   baseline_confidence_mean=np.nan, baseline_error_count=0,
                   baseline_error_mean=np.nan)
    return out


def softmax_top(logits):
    """(argmax, max probability, probabilities) of softmax(logits) in float64 with NumPy."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    e = np.exp(z - z.max())
    p = e / e.sum()
    k = int(p.argmax())
    return k, float(p[k]), p


def log_bucket_bounds() -> np.ndarray:
    """The histogram bounds of csrc/log_buckets.hpp, from their decimal spelling: m/10 * 10^d for
    d = -6 .. 2 and m = 10 .. 99 (two significant digits), then 1e3."""
    texts = [f"{m // 10}.{m % 10}e{d}" for d in range(-6, 3) for m in range(10, 100)] + ["1.0e3"]
    return np.array([float(t) for t in texts])


def log_histogram(values) -> np.ndarray:
    """Counts per bucket, bucket i = (bounds[i-1], bounds[i]] with -inf / +inf at the ends."""
    bounds = log_bucket_bounds()
    idx = np.searchsorted(bounds, np.asarray(values, np.float64), side="left")
    return np.bincount(idx, minlength=len(bounds) + 1).astype(np.uint64)


def nearest_rank_quantile(values, q: float) -> float:
    """The order statistic of rank max(1, ceil(q * n)) (the inverted-CDF quantile)."""
    import math

    s = np.sort(np.asarray(values, np.float64))
    rank = max(1, math.ceil(q * len(s)))
    return float(s[rank - 1])
