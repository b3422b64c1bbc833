"""From a snapshot to torch data: flux-weighted training rows and the held-out rows.

This is the only Vortex module that imports torch at import time; ``vortex.training`` loads it
on first use of one of its names.

Example
-------
>>> data = TrainingPipeline(batch_size=64).build(buffer.snapshot())      # doctest: +SKIP
>>> for x, y, w in data.train_loader():                                  # doctest: +SKIP
...     loss = weighted_loss(F.cross_entropy(model(x), y, reduction="none"), w)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import FluxConfig
from .flux import FluxDynamics, FluxWeights

__all__ = ["HoldoutDataset", "PipelineData", "TrainingPipeline", "WeightedDataset", "weighted_loss"]

_TASKS = ("classification", "regression")


def _batch(batch: Any) -> Any:
    """collate_fn for datasets that return whole batches from ``__getitems__``."""
    return batch


class _TensorRows(Dataset):
    """Rows of aligned tensors; ``__getitems__`` gathers a whole batch with one index op
    instead of stacking per-row tensors (which costs a Python call per row).
    """

    def __init__(self, *tensors: torch.Tensor) -> None:
        self._tensors = tensors

    def __len__(self) -> int:
        return int(self._tensors[0].shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self._tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return tuple(t.index_select(0, idx) for t in self._tensors)


class WeightedDataset(_TensorRows):
    """Trained rows as ``(features, label, weight)``.

    Attributes
    ----------
    features : torch.Tensor
        ``(n, d)`` float32.
    labels : torch.Tensor
        ``(n,)`` int64 (classification) or float32 (regression).
    weights : torch.Tensor
        ``(n,)`` float32 flux weights, mean 1.
    seq : torch.Tensor
        ``(n,)`` int64 sequence numbers of the rows.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                 seq: torch.Tensor) -> None:
        super().__init__(features, labels, weights)
        self.features, self.labels, self.weights, self.seq = features, labels, weights, seq


class HoldoutDataset(_TensorRows):
    """Held-out (sacred position) rows as ``(features, label)``; attributes as
    :class:`WeightedDataset` without weights, plus ``positions`` (int8 flux positions).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, seq: torch.Tensor,
                 positions: torch.Tensor) -> None:
        super().__init__(features, labels)
        self.features, self.labels, self.seq, self.positions = features, labels, seq, positions


@dataclass(frozen=True, eq=False)
class PipelineData:
    """Result of :meth:`TrainingPipeline.build`.

    Attributes
    ----------
    train : WeightedDataset
    holdout : HoldoutDataset
    flux : FluxWeights
        The weights and masks over the whole snapshot.
    batch_size : int
    task : str
    """

    train: WeightedDataset
    holdout: HoldoutDataset
    flux: FluxWeights
    batch_size: int
    task: str

    def train_loader(self, shuffle: bool = True, generator: torch.Generator | None = None,
                     sampler: Sampler[int] | Iterable[int] | None = None) -> DataLoader:
        """Batches ``(features, labels, weights)`` of the trained rows.

        Parameters
        ----------
        shuffle
            Reshuffle every epoch (ignored when ``sampler`` is given).
        generator
            torch Generator for the shuffle (reproducible order).
        sampler
            A sampler of row indices, e.g. ``DistributedSampler(data.train)`` under DDP.
        """
        return DataLoader(self.train, batch_size=self.batch_size,
                          shuffle=shuffle if sampler is None else None, sampler=sampler,
                          generator=generator, collate_fn=_batch)

    def holdout_loader(self) -> DataLoader:
        """Batches ``(features, labels)`` of the held-out rows, in snapshot order."""
        return DataLoader(self.holdout, batch_size=self.batch_size, shuffle=False, collate_fn=_batch)


class TrainingPipeline:
    """Turns a snapshot into flux-weighted training data and a held-out set.

    Parameters
    ----------
    flux
        FluxDynamics parameters.
    batch_size
        Rows per batch of the loaders.
    task
        ``"classification"`` (labels int64) or ``"regression"`` (labels float32).
    """

    def __init__(self, flux: FluxConfig | None = None, batch_size: int = 32,
                 task: str = "classification") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        if task not in _TASKS:
            raise ValueError(f"task={task!r} must be 'classification' or 'regression'")
        self.flux = FluxDynamics(flux)
        self.batch_size = int(batch_size)
        self.task = task

    def _labels(self, labels: np.ndarray) -> torch.Tensor:
        if self.task == "regression":
            return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        if labels.dtype.kind == "f" and (not np.all(np.isfinite(labels))
                                         or not np.array_equal(labels, np.round(labels))):
            raise ValueError("classification needs integer labels; the snapshot has "
                             "non-integral float labels")
        return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))

    def build(self, snapshot: Any) -> PipelineData:
        """Flux weights for the snapshot, then its rows at trained positions (with their
        weights) and its held-out rows as torch datasets.

        Parameters
        ----------
        snapshot
            A :class:`vortex.training.Snapshot` (or an object with its ``features``,
            ``labels``, ``seq``, ``episode`` and ``error`` arrays), in arrival order.
        """
        fw = self.flux.compute(snapshot)
        features = np.asarray(snapshot.features, dtype=np.float32)
        labels = np.asarray(snapshot.labels)
        seq = np.asarray(snapshot.seq, dtype=np.int64)
        if features.ndim != 2 or features.shape[0] != len(fw) or labels.shape != (len(fw),):
            raise ValueError(f"snapshot columns disagree: features {features.shape}, "
                             f"labels {labels.shape}, {len(fw)} rows of seq")
        train, hold = fw.train_mask, fw.holdout_mask
        train_ds = WeightedDataset(torch.from_numpy(features[train]),
                                   self._labels(labels[train]),
                                   torch.from_numpy(fw.weights[train]),
                                   torch.from_numpy(seq[train]))
        holdout_ds = HoldoutDataset(torch.from_numpy(features[hold]),
                                    self._labels(labels[hold]),
                                    torch.from_numpy(seq[hold]),
                                    torch.from_numpy(fw.positions[hold]))
        return PipelineData(train_ds, holdout_ds, fw, self.batch_size, self.task)


def weighted_loss(per_sample_loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean ``sum(w * loss) / sum(w)`` of per-sample losses.

    With all-zero weights it returns ``sum(w * loss)`` (a zero that keeps the graph) rather
    than NaN.

    Raises
    ------
    ValueError
        The two are not 1-D tensors of the same length.
    """
    if per_sample_loss.ndim != 1 or weights.shape != per_sample_loss.shape:
        raise ValueError(f"per_sample_loss {tuple(per_sample_loss.shape)} and weights "
                         f"{tuple(weights.shape)} must be 1-D of the same length")
    w = weights.to(per_sample_loss.dtype)
    total = (per_sample_loss * w).sum()
    denom = w.sum()
    return total / denom if bool(denom > 0) else total
