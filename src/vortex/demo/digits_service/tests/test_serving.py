import digits_service
import numpy as np
import pytest
from digits_service import VIEW_OFFSETS, blur, predict, shift


def linear_model(seed=0):
    w = 0.1 * np.random.default_rng(seed).normal(size=(64, 10))
    return lambda batch: batch @ w


def test_shift_moves_pixels_and_zero_fills():
    img = np.arange(64, dtype=np.float32)[None]
    right = shift(img, 0, 1).reshape(8, 8)
    assert (right[:, 0] == 0).all()
    assert (right[:, 1:] == img.reshape(8, 8)[:, :-1]).all()
    assert (shift(shift(img, 1, 0), -1, 0).reshape(8, 8)[:-1] == img.reshape(8, 8)[:-1]).all()


def test_blur_keeps_constant_images():
    img = np.full((2, 64), 3.0, dtype=np.float32)
    assert np.allclose(blur(img), 3.0)


def test_predict_returns_log_probabilities_for_every_view_count():
    x = np.random.default_rng(1).random((5, 64)).astype(np.float32)
    out = predict(linear_model(), x)
    assert out.shape == (5, 10)
    assert np.allclose(np.exp(out).sum(axis=1), 1.0, atol=1e-6)


def test_tunables_are_within_their_declared_ranges():
    t = digits_service.tunables.values()
    assert 1 <= t["views"] <= len(VIEW_OFFSETS)
    assert 0.25 <= t["temperature"] <= 4.0
    assert isinstance(t["smooth"], bool)


def test_one_view_is_the_plain_model_at_temperature_one():
    t = digits_service.tunables.values()
    if t["views"] != 1 or t["temperature"] != 1.0 or t["smooth"]:
        pytest.skip("tunables changed from the defaults")
    x = np.random.default_rng(2).random((3, 64)).astype(np.float32)
    logits = linear_model()(x)
    expected = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    assert np.allclose(predict(linear_model(), x), expected, atol=1e-6)
