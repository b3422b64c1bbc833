"""Slow, obviously correct NumPy twins of the fast kernels; the tests compare the two."""

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
