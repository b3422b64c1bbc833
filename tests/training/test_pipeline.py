import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vortex.config import FluxConfig
from vortex.training import SampleBuffer, TrainingPipeline, weighted_loss
from vortex.training.flux import FluxDynamics


def filled(n=300, dim=5, label_dtype="int64", seed=0):
    rng = np.random.default_rng(seed)
    buf = SampleBuffer(dim, capacity=1000, label_dtype=label_dtype)
    labels = rng.integers(0, 3, n) if label_dtype == "int64" else rng.normal(size=n)
    buf.extend(rng.normal(size=(n, dim)), labels, errors=rng.random(n),
               episodes=np.arange(n) // 12)
    return buf.snapshot()


def test_build_splits_rows_by_flux_position_with_weights():
    snap = filled()
    data = TrainingPipeline(batch_size=16).build(snap)
    fw = FluxDynamics().compute(snap)
    assert len(data.train) == fw.n_train and len(data.holdout) == fw.n_holdout
    assert len(data.train) + len(data.holdout) == len(snap)
    np.testing.assert_array_equal(data.train.features.numpy(), snap.features[fw.train_mask])
    np.testing.assert_array_equal(data.train.labels.numpy(), snap.labels[fw.train_mask])
    np.testing.assert_array_equal(data.train.weights.numpy(), fw.weights[fw.train_mask])
    np.testing.assert_array_equal(data.holdout.seq.numpy(), snap.seq[fw.holdout_mask])
    assert set((data.holdout.seq.numpy() % 9 + 1).tolist()) == {3, 6, 9}
    assert set(data.holdout.positions.tolist()) == {3, 6, 9}
    assert data.train.weights.mean().item() == pytest.approx(1.0, rel=1e-5)
    x, y, w = data.train[0]
    assert x.shape == (5,) and y.dtype == torch.int64 and w.dtype == torch.float32
    hx, hy = data.holdout[0]
    assert hx.dtype == torch.float32 and hy.dtype == torch.int64


def test_loaders_cover_every_row_once_per_epoch():
    snap = filled(n=203)
    data = TrainingPipeline(batch_size=32).build(snap)
    seen = []
    batches = list(data.train_loader(generator=torch.Generator().manual_seed(0)))
    for x, y, w in batches:
        assert x.shape[0] == y.shape[0] == w.shape[0] <= 32 and x.shape[1] == 5
        seen.append(x)
    all_x = torch.cat(seen)
    assert all_x.shape[0] == len(data.train)
    # same multiset of rows, in shuffled order
    assert not torch.equal(all_x, data.train.features)
    order = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731
    assert torch.equal(order(all_x), order(data.train.features))
    again = list(data.train_loader(generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    plain = torch.cat([x for x, _, _ in data.train_loader(shuffle=False)])
    assert torch.equal(plain, data.train.features)
    hold = list(data.holdout_loader())
    assert torch.equal(torch.cat([x for x, _ in hold]), data.holdout.features)
    assert all(len(b) == 2 for b in hold)


def test_train_loader_with_a_sampler():
    data = TrainingPipeline(batch_size=4).build(filled(n=40))
    picked = [3, 1, 2]
    x, y, w = next(iter(data.train_loader(sampler=picked)))
    assert torch.equal(x, data.train.features[picked])
    assert torch.equal(w, data.train.weights[picked])


def test_regression_labels_are_float32():
    data = TrainingPipeline(task="regression").build(filled(label_dtype="float32"))
    assert data.train.labels.dtype == torch.float32 and data.holdout.labels.dtype == torch.float32
    ints = TrainingPipeline(task="regression").build(filled())
    assert ints.train.labels.dtype == torch.float32


def test_classification_rejects_fractional_float_labels():
    with pytest.raises(ValueError, match="integer labels"):
        TrainingPipeline().build(filled(label_dtype="float32"))


def test_flux_config_is_used():
    snap = filled()
    data = TrainingPipeline(flux=FluxConfig(holdout_positions=(1,))).build(snap)
    assert set(data.holdout.positions.tolist()) == {1}


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        TrainingPipeline(batch_size=0)
    with pytest.raises(ValueError, match="task"):
        TrainingPipeline(task="ranking")


def test_weighted_loss_is_weighted_mean_and_differentiable():
    loss = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    w = torch.tensor([1.0, 0.0, 3.0])
    out = weighted_loss(loss, w)
    assert out.item() == pytest.approx((1 + 12) / 4)
    out.backward()
    assert loss.grad.tolist() == pytest.approx([0.25, 0.0, 0.75])
    zero = weighted_loss(torch.tensor([1.0, 2.0], requires_grad=True), torch.zeros(2))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="same length"):
        weighted_loss(torch.ones(3), torch.ones(2))


def test_end_to_end_training_step_reduces_weighted_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    buf = SampleBuffer(4, capacity=2000)
    x = rng.normal(size=(1500, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    buf.extend(x, y, errors=np.full(1500, np.nan))
    data = TrainingPipeline(batch_size=64).build(buf.snapshot())
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def holdout_accuracy():
        with torch.no_grad():
            return (model(data.holdout.features).argmax(1) == data.holdout.labels).float().mean().item()

    before = holdout_accuracy()
    for _ in range(3):
        for xb, yb, wb in data.train_loader(generator=torch.Generator().manual_seed(0)):
            opt.zero_grad()
            weighted_loss(F.cross_entropy(model(xb), yb, reduction="none"), wb).backward()
            opt.step()
    assert holdout_accuracy() > max(before, 0.9)
