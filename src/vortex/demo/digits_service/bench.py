"""Benchmark of the digits service: prints one JSON object of metrics with their direction.

It judges the serving code on what the service must cope with: digits from scikit-learn's
bundled set, displaced by up to one pixel and noised, classified by a fixed linear model
trained here on the undisplaced training half (deterministic, so baseline and candidate see
the same model and data and differ only by the serving code and tunables).
"""

import json
import time

import numpy as np
from digits_service import predict, shift
from sklearn.datasets import load_digits


def _softmax_regression(x: np.ndarray, y: np.ndarray, epochs: int = 300, lr: float = 0.5):
    w = np.zeros((x.shape[1], 10))
    b = np.zeros(10)
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * (x.T @ g)
        b -= lr * g.sum(axis=0)
    return w, b


def main() -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    w, b = _softmax_regression(x[:1000], y[:1000])

    def logits_fn(batch):
        return batch @ w + b

    rng = np.random.default_rng(7)
    test = x[1000:].copy()
    offsets = rng.integers(-1, 2, size=(len(test), 2))
    for i, (dy, dx) in enumerate(offsets):
        test[i] = shift(test[i:i + 1], int(dy), int(dx))[0]
    test += rng.normal(0.0, 0.1, size=test.shape).astype(np.float32)
    labels = y[1000:]

    predict(logits_fn, test[:16])  # warm up
    start = time.perf_counter()
    logits = np.concatenate([predict(logits_fn, row[None]) for row in test[:200]]
                            + [predict(logits_fn, test[200:])])
    latency_ms = (time.perf_counter() - start) * 1e3 / 201
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    print(json.dumps({
        "error_rate": {"value": float((logits.argmax(axis=1) != labels).mean()), "better": "lower"},
        "nll": {"value": float(-log_probs[np.arange(len(labels)), labels].mean()), "better": "lower"},
        "latency_ms": {"value": latency_ms, "better": "lower"},
    }))


if __name__ == "__main__":
    main()
