"""FluxDynamics over 10 million samples against its peer and its memory-bandwidth bound.

Groups (goals from issue 3):
- flux (10M) vs lfilter: the whole ``FluxDynamics.compute`` (validation, allocation of the
  outputs, kernel) against ``scipy.signal.lfilter`` computing only the reverse discounted sum
  (no episode resets, no recency, no positions) on the same errors: >= 2x faster.
- flux (10M) vs bandwidth: against a NumPy copy of exactly the bytes the kernel must move (it
  reads seq, episode, error = 20 B and writes weights, position, two masks = 7 B per sample),
  from a source into a destination that are both already faulted in: within 2x. Shown twice:
  the kernel writing into preallocated outputs (``flux_weights(..., out=...)``, what the copy
  does too), and the whole ``FluxDynamics.compute`` a user calls, which also pays the
  first-touch page faults of its 70 MB of fresh outputs (~7 ms here; no hugepages on this VM).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from vortex.config import FluxConfig
from vortex.kernels import flux as kernel
from vortex.training import FluxDynamics

scipy_signal = pytest.importorskip("scipy.signal")

N = 10_000_000
CONFIG = FluxConfig()
KERNEL_BYTES_PER_SAMPLE = 8 + 8 + 4 + 4 + 1 + 1 + 1


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    seq = np.arange(10**9, 10**9 + N, dtype=np.int64)
    episode = np.cumsum(rng.random(N) < 0.01).astype(np.int64)
    error = rng.random(N).astype(np.float32)
    error[rng.random(N) < 0.3] = np.nan
    kernel.warmup()
    return seq, episode, error


def _check_against_reference(weights, data, n=200_000):
    """The newest n rows' weights, up to the common normalisation, equal the reference's."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tests"))
    import naive

    seq, episode, error = (a[-n:] for a in data)
    want = naive.flux_weights(seq, episode, error, half_life=CONFIG.half_life, gamma=CONFIG.gamma,
                              lam=CONFIG.lam, w_max=CONFIG.w_max,
                              holdout_positions=CONFIG.holdout_positions)[0]
    got = weights[-n:].astype(np.float64)
    got *= want.sum() / got.sum()  # recency makes older rows negligible; compare shapes
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_flux_10m_vortex(benchmark, data):
    benchmark.group = "flux (10M samples) vs lfilter"
    seq, episode, error = data
    flux = FluxDynamics(CONFIG)
    fw = benchmark.pedantic(flux.compute, args=({"seq": seq, "episode": episode, "error": error},),
                            rounds=5, warmup_rounds=1)
    assert fw.weights[fw.train_mask].mean() == pytest.approx(1.0, rel=1e-4)
    _check_against_reference(fw.weights, data)


def test_flux_10m_scipy_lfilter_reverse_discounted_sum(benchmark, data):
    benchmark.group = "flux (10M samples) vs lfilter"
    e = np.nan_to_num(data[2].astype(np.float64))  # prepared outside the timing (favours lfilter)
    b = benchmark.pedantic(lambda: scipy_signal.lfilter([1.0], [1.0, -CONFIG.gamma], e[::-1])[::-1],
                           rounds=3, warmup_rounds=1)
    np.testing.assert_allclose(b[-3:], [e[-3] + CONFIG.gamma * (e[-2] + CONFIG.gamma * e[-1]),
                                        e[-2] + CONFIG.gamma * e[-1], e[-1]], rtol=1e-12)


def test_flux_10m_kernel_vortex(benchmark, data):
    benchmark.group = "flux (10M samples) vs bandwidth bound"
    seq, episode, error = data
    out = (np.empty(N, np.float32), np.empty(N, np.int8), np.empty(N, np.bool_), np.empty(N, np.bool_))
    kw = dict(half_life=CONFIG.half_life, gamma=CONFIG.gamma, lam=CONFIG.lam, w_max=CONFIG.w_max,
              holdout_positions=CONFIG.holdout_positions, out=out)
    benchmark.pedantic(kernel.flux_weights, args=(seq, episode, error), kwargs=kw, rounds=7,
                       warmup_rounds=1)
    benchmark.extra_info["bytes"] = N * KERNEL_BYTES_PER_SAMPLE
    _check_against_reference(out[0], data)


def test_flux_10m_compute_vortex_fresh_outputs(benchmark, data):
    """What a user gets: compute() allocating its outputs, against the same copy bound."""
    benchmark.group = "flux (10M samples) vs bandwidth bound"
    seq, episode, error = data
    fw = benchmark.pedantic(FluxDynamics(CONFIG).compute,
                            args=({"seq": seq, "episode": episode, "error": error},),
                            rounds=5, warmup_rounds=1)
    benchmark.extra_info["bytes"] = N * KERNEL_BYTES_PER_SAMPLE
    _check_against_reference(fw.weights, data)


def test_flux_10m_numpy_copy_of_kernel_bytes(benchmark):
    """The bound: copying N * 27 / 2 bytes reads and writes as many bytes as the kernel must."""
    benchmark.group = "flux (10M samples) vs bandwidth bound"
    src = np.ones(N * KERNEL_BYTES_PER_SAMPLE // 2, np.uint8)
    dst = np.zeros_like(src)
    benchmark.extra_info["bytes"] = 2 * src.nbytes
    benchmark.pedantic(np.copyto, args=(dst, src), rounds=7, warmup_rounds=1)
    assert dst[0] == 1 and dst[-1] == 1
