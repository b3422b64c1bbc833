"""Numba kernel of the FluxDynamics sample weights (see DESIGN.md, FluxDynamics).

For samples in arrival order with global sequence number ``seq``, error ``e`` and episode
``s``: position ``p = 1 + seq % 9`` (held out when in ``holdout_positions``), forward chain
``f = 0.5 ** ((seq_max - seq) / half_life)``, backward chain ``b[i] = e[i] + gamma * b[i+1]``
while ``s[i+1] == s[i]`` else ``e[i]``, weight ``w = min(f * (1 + lam * b), w_max)`` (0 when
held out), scaled so the trained weights' mean is 1.

:func:`flux_weights` validates the arrays and runs :func:`_flux_blocks`, one sweep over
blocks of samples from the newest back (the backward chain needs the later sample first),
then :func:`_scale`. Per block: one vectorised read of the inputs, the serial chain with four
samples per step, then a vectorised pass that takes the forward factor from a table of step
powers and the position from a repeating pattern, so no sample pays for a ``pow`` or a ``%``.
A block whose seqs are not consecutive (a gap, or a snapshot not in arrival order) computes
those two directly per sample, and if the newest sample is not the last one the sweep is
redone with the right ``seq_max``.

Numerical conventions, shared with the NumPy reference in ``tests/naive.py``:

- a NaN error (no ground truth yet) counts as error 0;
- forward factors below the smallest normal double (2.2e-308) are 0 (otherwise old samples
  cost slow subnormal arithmetic); if that leaves every trained raw weight 0, every trained
  row gets weight 1;
- weights are float32 (computed in float64).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["flux_weights", "warmup"]

# contract: multiply-adds fuse; reassoc: the weight sum is vectorised (summation order differs
# from a serial sum by rounding only). No flag that changes NaN/inf semantics.
_JIT: dict[str, Any] = dict(nogil=True, cache=True, boundscheck=False, error_model="numpy",
            fastmath={"contract", "reassoc"})


_BLOCK = 65536  # samples per block (two float64 scratch columns of 512 KiB): best measured here,
#                 10M samples, min of 15 rounds: 16384 -> 21.2 ms, 32768 -> 17.7, 65536 -> 16.7
_PREFETCH_LOCALITY = 3  # llvm.prefetch locality: 3 = keep in every cache level
_OPAQUE_POINTERS = _llvm.llvm_version_info >= (15,)  # intrinsic name mangling changed
_TINY = 2.2250738585072014e-308  # smallest normal double: smaller forward factors are 0


@intrinsic
def _prefetch(typingctx, array, index):
    """Hint the CPU to start loading ``array[index]``'s cache line (LLVM ``llvm.prefetch``:
    read, keep in all levels); no effect on results, and an address out of range is harmless
    (a prefetch never faults), though callers stay in range.
    """
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        arr = context.make_array(array_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, array_type, arr, [args[1]],
                                       wraparound=False, boundscheck=False)
        ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
            "llvm.prefetch.p0" if _OPAQUE_POINTERS else "llvm.prefetch.p0i8")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, _PREFETCH_LOCALITY),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_JIT)
def _block_outputs(chain, powers, f_last, lam, w_max, pos_pattern, held_pattern,
                   keep_pattern, weights, positions, holdout_mask, train_mask, m):  # pragma: no cover
    """Outputs of a block of consecutive seqs; returns the sum of its weights.

    weights[t] = min(f_last * powers[t] * (1 + lam * chain[t]), w_max), or 0 where not
    keep_pattern[t]; positions and masks copied from the patterns. A separate function with one simple loop, which LLVM
    vectorises (Numba's slice assignment would go through its generic broadcasting path).
    """
    total = 0.0
    for t in range(m):
        f = f_last * powers[t]
        f = f if f >= _TINY else 0.0
        w = f * (1.0 + lam * chain[t])
        w = w if w < w_max else w_max
        w = w if keep_pattern[t] else 0.0  # a byte per sample rather than a float64 factor
        total += w
        weights[t] = w
        positions[t] = pos_pattern[t]
        holdout_mask[t] = held_pattern[t]
        train_mask[t] = keep_pattern[t]
    return total


@numba.njit(**_JIT)
def _prepare(error, episode, seq, episode_after, gamma, chain, coef, m):  # pragma: no cover
    """chain[t] = error[t] (NaN as 0); coef[t] = gamma where sample t+1 is in the same
    episode, else 0. Returns bit 1: an error outside [0, 1]; bit 2: seq not consecutive.
    """
    bad = 0
    off = 0
    for t in range(m - 1):
        e = np.float64(error[t])
        bad |= (e < 0.0) | (e > 1.0)  # type: ignore[assignment]  # numba types it
        chain[t] = e if e == e else 0.0
        coef[t] = gamma if episode[t] == episode[t + 1] else 0.0
        off |= seq[t + 1] - seq[t] != 1
    e = np.float64(error[m - 1])
    bad |= (e < 0.0) | (e > 1.0)  # type: ignore[assignment]
    chain[m - 1] = e if e == e else 0.0
    coef[m - 1] = gamma if episode[m - 1] == episode_after else 0.0
    return (1 if bad else 0) | (2 if off else 0)


@numba.njit(**_JIT)
def _flux_blocks(seq, episode, error, held_pattern, keep_pattern, pos_pattern,
                 keep_count, powrev, inv_hl, gamma, lam, w_max, anchor, weights, positions,
                 train_mask, holdout_mask):  # pragma: no cover - compiled
    """Raw clipped weights (0 for held out), positions and masks, block by block from the end.

    Returns (status, trained_sum, n_trained, seq_max): status 0 ok, 1 an error outside [0, 1],
    2 a negative seq.

    Pass A (reverse, serial): the backward chain b[i] = e[i] + c[i] * b[i+1], c[i] = gamma
    within an episode else 0, four samples per step: the four chain values are
    E_k + C_k * b[i+1] with E_k, C_k computed off the chain, so the serial dependency is one
    multiply-add per four samples instead of one per sample.
    Pass B (vectorised over the block, which is still in cache): forward factors from the
    table of step powers, positions and held-out flags from a repeating pattern (no pow, no %
    per sample), weights, clip, sum. A block whose seqs are not consecutive (gaps, or a
    snapshot not in arrival order) computes those directly per sample.
    """
    n = seq.shape[0]
    block = powrev.shape[0]   # min(n, _BLOCK)
    chain = np.empty(block)   # cleaned errors, then the backward chain
    coef = np.empty(block)    # c[t]
    total = 0.0
    n_trained = 0
    seq_max = seq[n - 1]
    b = 0.0                    # chain value of the sample just after the block
    ep_after = episode[n - 1]  # its episode (for the very last sample b = 0, so any value)
    bad = False
    hi = n
    while hi > 0:
        lo = max(0, hi - block)
        m = hi - lo
        sq = seq[lo:hi]
        ep = episode[lo:hi]
        flags = _prepare(error[lo:hi], ep, sq, ep_after, gamma, chain, coef, m)
        bad |= (flags & 1) != 0
        irregular = (flags & 2) != 0
        # ---- pass A: serial, four samples per step (see above)
        t = m - 1
        # Prefetch the next (older) block's inputs while this serial loop computes, so its
        # _prepare reads them from cache: ~5% faster over 10M samples (min 16.7 -> 15.9 ms).
        ahead = lo - block
        while t >= 3:
            if ahead + t >= 0:
                _prefetch(seq, ahead + t)  # type: ignore[call-arg]  # a numba intrinsic: typingctx is numba's
                _prefetch(episode, ahead + t)
                _prefetch(error, ahead + t)
            e0 = chain[t]
            e1 = chain[t - 1]
            e2 = chain[t - 2]
            e3 = chain[t - 3]
            c0 = coef[t]
            c1 = coef[t - 1]
            c2 = coef[t - 2]
            c3 = coef[t - 3]
            big1 = e1 + c1 * e0
            big2 = e2 + c2 * big1
            big3 = e3 + c3 * big2
            mul1 = c1 * c0
            mul2 = c2 * mul1
            mul3 = c3 * mul2
            chain[t] = e0 + c0 * b
            chain[t - 1] = big1 + mul1 * b
            chain[t - 2] = big2 + mul2 * b
            b = big3 + mul3 * b
            chain[t - 3] = b
            t -= 4
        while t >= 0:
            b = chain[t] + coef[t] * b
            chain[t] = b
            t -= 1
        ep_after = ep[0]
        # ---- pass B
        wb = weights[lo:hi]
        if not irregular:
            if sq[0] < 0:
                return 2, 0.0, 0, seq_max
            seq_max = max(seq_max, sq[m - 1])
            q = sq[0] % 9
            total += _block_outputs(chain, powrev[block - m:], 0.5 ** ((anchor - sq[m - 1]) * inv_hl),
                                    lam, w_max, pos_pattern[q:], held_pattern[q:],
                                    keep_pattern[q:], wb, positions[lo:hi], holdout_mask[lo:hi],
                                    train_mask[lo:hi], m)
            n_trained += keep_count[q + m] - keep_count[q]
        else:
            for t in range(m):
                s = sq[t]
                if s < 0:
                    return 2, 0.0, 0, seq_max
                seq_max = max(seq_max, s)
                f = 0.5 ** ((anchor - s) * inv_hl)
                f = f if f >= _TINY else 0.0
                w = f * (1.0 + lam * chain[t])
                w = w if w < w_max else w_max
                r = s % 9
                w = w if keep_pattern[r] else 0.0
                total += w
                wb[t] = w
                positions[lo + t] = pos_pattern[r]
                holdout_mask[lo + t] = held_pattern[r]
                train_mask[lo + t] = keep_pattern[r]
                n_trained += keep_pattern[r]
        hi = lo
    return (1 if bad else 0), total, n_trained, seq_max


@numba.njit(**_JIT)
def _tables(block, held9, half_life):  # pragma: no cover - compiled
    """Per-call tables of :func:`_flux_blocks` for consecutive seqs from a multiple of 9.

    Index j (0 <= j < block + 9) stands for seq % 9 == j % 9: held_pattern, keep_pattern,
    pos_pattern (``1 + j % 9``), keep_count[j] (trained among the first j).
    powrev[t] = 0.5 ** ((block - 1 - t) / half_life), the forward factor of the sample
    t places into a full block relative to its last sample, as a product of two powers from
    256-entry tables (2 roundings instead of 1; ~500 pow calls instead of one per entry).
    Built here rather than with NumPy, whose array-wide %, isin and pow took ~3 ms a call.
    """
    size = block + 9
    held_pattern = np.empty(size, np.bool_)
    keep_pattern = np.empty(size, np.bool_)
    pos_pattern = np.empty(size, np.int8)
    keep_count = np.empty(size + 1, np.int64)
    keep_count[0] = 0
    r = 0
    for j in range(size):
        held = held9[r]
        held_pattern[j] = held
        keep_pattern[j] = not held
        pos_pattern[j] = r + 1
        keep_count[j + 1] = keep_count[j] + (0 if held else 1)
        r = 0 if r == 8 else r + 1
    low = np.empty(256)
    for j in range(256):
        low[j] = 0.5 ** (j / half_life)
    high = np.empty((block >> 8) + 1)
    for j in range(high.shape[0]):
        high[j] = 0.5 ** ((j << 8) / half_life)
    powrev = np.empty(block)
    for t in range(block):
        k = block - 1 - t
        powrev[t] = high[k >> 8] * low[k & 255]
    return held_pattern, keep_pattern, pos_pattern, keep_count, powrev


@numba.njit(**_JIT)
def _scale(weights, train_mask, scale, uniform):  # pragma: no cover - compiled
    """Trained weights times `scale` (or 1 when `uniform`); held-out weights stay 0."""
    if uniform:
        for i in range(weights.shape[0]):
            weights[i] = 1.0 if train_mask[i] else 0.0
    else:
        s = np.float32(scale)
        for i in range(weights.shape[0]):
            weights[i] = weights[i] * s


def flux_weights(seq: np.ndarray, episode: np.ndarray, error: np.ndarray, *, half_life: float,
                 gamma: float, lam: float, w_max: float,
                 holdout_positions: tuple[int, ...],
                 out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flux weights of samples given in arrival order.

    Parameters
    ----------
    seq, episode
        ``(n,)`` integer arrays: global sequence numbers (>= 0) and episode ids.
    error
        ``(n,)`` float array: errors in [0, 1], NaN for "no ground truth" (counts as 0).
    half_life, gamma, lam, w_max, holdout_positions
        As in :class:`vortex.config.FluxConfig` (not re-validated here).
    out
        Optional preallocated ``(weights, positions, train_mask, holdout_mask)`` of dtypes
        float32, int8, bool, bool and length n, written in place (saves the allocation and the
        first-touch page faults of fresh output memory when called repeatedly).

    Returns
    -------
    weights : ``(n,)`` float32, 0 for held-out rows, trained rows' mean 1
    positions : ``(n,)`` int8 flux positions ``1 + seq % 9``
    train_mask, holdout_mask : ``(n,)`` bool

    Raises
    ------
    ValueError
        Arrays of different lengths or not 1-D, non-integer seq/episode, a negative seq,
        an error outside [0, 1].
    """
    arrays: list[np.ndarray[Any, Any]] = []
    for name, arr, kinds, dtype in (("seq", seq, "iu", np.int64), ("episode", episode, "iu", np.int64),
                                    ("error", error, "f", np.float32)):
        a = np.asarray(arr)
        if a.dtype.kind not in kinds:
            raise ValueError(f"{name}: dtype {a.dtype} is not {'an integer' if kinds == 'iu' else 'a float'} type")
        if a.ndim != 1:
            raise ValueError(f"{name}: shape {a.shape} is not 1-D")
        arrays.append(np.ascontiguousarray(a, dtype=dtype))
    seq_a, ep_a, err_a = arrays
    n = seq_a.shape[0]
    if ep_a.shape[0] != n or err_a.shape[0] != n:
        raise ValueError(f"seq, episode and error lengths differ: {n}, {ep_a.shape[0]}, {err_a.shape[0]}")
    if out is None:
        out = (np.empty(n, np.float32), np.empty(n, np.int8), np.empty(n, np.bool_),
               np.empty(n, np.bool_))
    else:
        for a, out_dtype in zip(out, (np.float32, np.int8, np.bool_, np.bool_), strict=True):
            if (not isinstance(a, np.ndarray) or a.dtype != out_dtype or a.shape != (n,)
                    or not a.flags.c_contiguous or not a.flags.writeable):
                raise ValueError(f"out: each array must be a writable contiguous ({n},) array "
                                 "of float32, int8, bool, bool")
    weights, positions, train_mask, holdout_mask = out
    if n == 0:
        return weights, positions, train_mask, holdout_mask
    block = min(n, _BLOCK)
    held9 = np.zeros(9, np.bool_)
    held9[[p - 1 for p in holdout_positions]] = True
    held_pattern, keep_pattern, pos_pattern, keep_count, powrev = _tables(
        block, held9, float(half_life))
    anchor = seq_a[-1]
    while True:
        status, total, n_trained, seq_max = _flux_blocks(
            seq_a, ep_a, err_a, held_pattern, keep_pattern, pos_pattern, keep_count,
            powrev, 1.0 / float(half_life), float(gamma), float(lam), float(w_max), anchor,
            weights, positions, train_mask, holdout_mask)
        if status == 1:
            index = int(np.flatnonzero((err_a < 0) | (err_a > 1))[0])
            raise ValueError(f"error[{index}]={float(err_a[index])!r} is outside [0, 1] "
                             "(use NaN for 'no ground truth')")
        if status == 2:
            index = int(np.flatnonzero(seq_a < 0)[0])
            raise ValueError(f"seq[{index}]={seq_a[index]} is negative")
        if seq_max == anchor:
            break
        anchor = seq_max  # not in arrival order: the newest sample is not the last; redo
    if n_trained:
        _scale(weights, train_mask, n_trained / total if total > 0 else 1.0, total <= 0)
    return weights, positions, train_mask, holdout_mask


def warmup() -> None:
    """Compile (or load from Numba's cache) the kernels for the snapshot dtypes."""
    seq = np.arange(20, dtype=np.int64)
    flux_weights(seq, seq // 5, np.full(20, 0.5, np.float32), half_life=10.0, gamma=0.9, lam=1.0,
                 w_max=10.0, holdout_positions=(3, 6, 9))

