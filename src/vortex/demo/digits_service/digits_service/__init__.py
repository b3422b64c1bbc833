"""Serving code of the Vortex demo: 8x8 digit images in, class logits out.

The model itself is any callable ``logits_fn(batch (n, 64) float32) -> (n, 10)``; this module
owns what surrounds it and what Vortex may tune (``tunables.toml``): how many shifted views of
an image are averaged (robustness to translated inputs, at a latency cost), the softmax
temperature, and an optional denoising blur.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vortex.tunables import Tunables

__all__ = ["TUNABLES_PATH", "VIEW_OFFSETS", "blur", "predict", "shift", "tunables"]

TUNABLES_PATH = Path(__file__).with_name("tunables.toml")
tunables = Tunables(TUNABLES_PATH)

# The identity first, then one-pixel shifts, then diagonals: ``views = k`` uses the first k.
VIEW_OFFSETS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))


def shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images (n, 64) shifted by (dy, dx) pixels on their 8x8 grid, zero-filled."""
    grid = images.reshape(-1, 8, 8)
    out = np.zeros_like(grid)
    ys, yd = (slice(0, 8 - dy), slice(dy, 8)) if dy >= 0 else (slice(-dy, 8), slice(0, 8 + dy))
    xs, xd = (slice(0, 8 - dx), slice(dx, 8)) if dx >= 0 else (slice(-dx, 8), slice(0, 8 + dx))
    out[:, yd, xd] = grid[:, ys, xs]
    return out.reshape(images.shape)


def blur(images: np.ndarray) -> np.ndarray:
    """3x3 box blur on the 8x8 grid (edges averaged over the pixels that exist)."""
    grid = images.reshape(-1, 8, 8)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones((8, 8), images.dtype), 1)
    total = sum(padded[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3))
    count = sum(ones[i:i + 8, j:j + 8] for i in range(3) for j in range(3))
    return (total / count).reshape(images.shape).astype(images.dtype)


def predict(logits_fn, images: np.ndarray) -> np.ndarray:
    """Class logits for a batch of images, under the current tunables.

    The logits returned are ``log`` of the probabilities averaged over the views, so a
    softmax of them gives those averaged probabilities.
    """
    images = np.asarray(images, dtype=np.float32).reshape(-1, 64)
    t = tunables.values()
    if t["smooth"]:
        images = blur(images)
    views = int(t["views"])
    temperature = float(t["temperature"])
    probs = np.zeros((images.shape[0], 0), dtype=np.float64)
    for dy, dx in VIEW_OFFSETS[:views]:
        logits = np.asarray(logits_fn(shift(images, dy, dx) if (dy or dx) else images),
                            dtype=np.float64) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        probs = p if probs.shape[1] == 0 else probs + p
    return np.log(probs / views + 1e-12)
