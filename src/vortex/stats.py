"""The two confidence intervals Vortex decides with, in one place.

* :func:`student_t_interval` — mean of paired differences and its Student-t interval. The RSI
  sandbox judges a patch on a handful (5 by default) of interleaved baseline/candidate
  benchmark runs: too few for a bootstrap, and benchmark noise is close enough to normal.
* :func:`paired_bootstrap_interval` — percentile bootstrap of a statistic of two paired
  samples, resampling the *same* indices for both. Training validation compares a candidate
  and the active model on the same held-out samples (hundreds or thousands, 0/1 scores for
  classification: far from normal), so the interval must come from the data's own spread of
  per-sample differences.

Both are checked against SciPy (``scipy.stats.t``, ``scipy.stats.bootstrap``) in
``tests/test_stats.py``; SciPy itself is not a runtime dependency, and NumPy is imported
only by the bootstrap.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["t_quantile", "student_t_interval", "paired_bootstrap_interval"]


def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution for an integer ``df`` (no SciPy).

    The CDF has a finite closed form for integer df (A&S 26.7.3-4); the quantile is found by
    bisection on it to ~1e-12. Above df = 1000 the Cornish-Fisher expansion around the normal
    quantile (A&S 26.7.5) is used; its error there is below 1e-9.

    Raises
    ------
    ValueError
        ``p`` is not in (0, 1) or ``df`` is not an integer >= 1.
    """
    if not 0 < p < 1:
        raise ValueError(f"p={p!r} must be in (0, 1)")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df={df!r} must be an integer >= 1")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if df > 1000:
        z = statistics.NormalDist().inv_cdf(p)
        g1 = (z ** 3 + z) / 4
        g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
        g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
        return z + g1 / df + g2 / df ** 2 + g3 / df ** 3
    target = 2 * p - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_central(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def student_t_interval(diffs: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided ``confidence`` Student-t interval.

    Returns
    -------
    (mean, low, high)

    Raises
    ------
    ValueError
        Fewer than two differences, or ``confidence`` not in (0, 1).
    """
    n = len(diffs)
    if n < 2:
        raise ValueError(f"need at least 2 paired differences, got {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}: must be in (0, 1)")
    mean = statistics.fmean(diffs)
    half = t_quantile(0.5 + confidence / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_bootstrap_interval(
        x: np.ndarray, y: np.ndarray,
        statistic: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
        confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x_mean, y_mean)`` over paired samples.

    Each resample draws ``n`` indices with replacement and takes the means of ``x`` and ``y``
    at the *same* indices, so the interval reflects the spread of the per-sample difference
    between the two, not two independent noises.

    Parameters
    ----------
    x, y
        Paired per-sample values, same length.
    statistic
        Vectorised function of the two resampled means (arrays of shape ``(k,)``), e.g. the
        relative improvement of ``x`` over ``y``.
    confidence
        Two-sided level, in (0, 1).
    resamples
        Number of bootstrap resamples (>= 100).
    seed
        Seed of the resampling, so a result is reproducible.

    Returns
    -------
    (low, high)

    Raises
    ------
    ValueError
        Empty or unequal inputs, ``confidence`` outside (0, 1) or fewer than 100 resamples.
    """
    import numpy as np  # here, not at the top: the sandbox's Student-t path needs no NumPy

    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError("paired samples are empty")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}: must be in (0, 1)")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples={resamples!r}: must be an integer >= 100")
    rng = np.random.default_rng(seed)
    n = x.size
    values = np.empty(resamples)
    # Resample in chunks so memory stays at a few MB whatever the sample size.
    chunk = max(1, (1 << 21) // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        values[start:stop] = statistic(x[idx].mean(axis=1), y[idx].mean(axis=1))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
