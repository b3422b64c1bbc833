"""A random-projection nearest-centroid ensemble serving 3-class predictions.

Its behaviour depends on runtime tunables (``tunables.toml``, hot-reloaded):

* ``ensemble_size``: members averaged in ``"thorough"`` mode (each member is a Python-level
  forward pass, so latency grows linearly with it);
* ``temperature``: softmax temperature, which sets confidence and calibration;
* ``cache_size``: size of the thorough-mode LRU result cache (memory);
* ``impute_missing``: NaN features are replaced by the training mean instead of raising.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from vortex.tunables import Tunables

__all__ = ["Service", "TUNABLES_PATH", "make_data"]

TUNABLES_PATH = os.path.join(os.path.dirname(__file__), "tunables.toml")
N_CLASSES, DIM, PROJ, MAX_MEMBERS = 3, 24, 48, 64


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of three overlapping Gaussian classes (fixed class means)."""
    means = np.random.default_rng(12345).normal(0.0, 0.55, size=(N_CLASSES, DIM))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, size=n)
    x = means[y] + rng.normal(0.0, 1.0, size=(n, DIM))
    return x.astype(np.float64), y


class Service:
    """The model plus its tunables; ``predict`` returns (label, probabilities, logits)."""

    def __init__(self, tunables: Tunables | None = None) -> None:
        self.tunables = tunables if tunables is not None else Tunables(TUNABLES_PATH)
        x, y = make_data(1500, seed=0)
        self.feature_mean = x.mean(axis=0)
        rng = np.random.default_rng(7)
        self.projections = [rng.normal(0.0, 1.0 / np.sqrt(DIM), size=(DIM, PROJ))
                            for _ in range(MAX_MEMBERS)]
        self.centroids = [np.stack([(x[y == c] @ p).mean(axis=0) for c in range(N_CLASSES)])
                          for p in self.projections]
        self.full_centroids = np.stack([x[y == c].mean(axis=0) for c in range(N_CLASSES)])
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def _clean(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (DIM,):
            raise ValueError(f"expected a feature vector of shape ({DIM},), got {x.shape}")
        bad = ~np.isfinite(x)
        if bad.any():
            if not self.tunables.get("impute_missing", False):
                raise ValueError(f"{int(bad.sum())} missing feature(s)")
            x = np.where(bad, self.feature_mean, x)
        return x

    def logits(self, x: np.ndarray, mode: str = "fast") -> np.ndarray:
        """Un-tempered class scores (negative half squared distances)."""
        x = self._clean(x)
        if mode == "fast":
            return -0.5 * ((self.full_centroids - x) ** 2).sum(axis=1) / DIM * 4
        if mode != "thorough":
            raise ValueError(f"mode={mode!r} must be 'fast' or 'thorough'")
        key = x.tobytes()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        k = int(self.tunables.get("ensemble_size", 8))
        acc = np.zeros(N_CLASSES)
        for j in range(k):  # one member at a time: the cost a real ensemble has
            z = x @ self.projections[j]
            acc += -0.5 * ((self.centroids[j] - z) ** 2).sum(axis=1) / PROJ * 4
        out = acc / k
        self._cache[key] = out
        limit = int(self.tunables.get("cache_size", 1024))
        while len(self._cache) > limit:
            self._cache.popitem(last=False)
        return out

    def predict(self, x: np.ndarray, mode: str = "fast") -> tuple[int, np.ndarray, np.ndarray]:
        z = self.logits(x, mode)
        t = float(self.tunables.get("temperature", 1.0))
        e = np.exp((z - z.max()) / t)
        p = e / e.sum()
        return int(p.argmax()), p, z

    def cache_bytes(self) -> int:
        """Bytes held by the result cache (keys and values)."""
        return sum(len(k) + v.nbytes for k, v in self._cache.items())
