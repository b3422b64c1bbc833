"""FluxDynamics: how much each buffered sample counts in the next training run.

See DESIGN.md (FluxDynamics) for the definition; the kernel is
:func:`vortex.kernels.flux.flux_weights`. A NaN error (no ground truth yet) counts as error 0:
such a sample still gets its recency weight but adds no error credit.

Example
-------
>>> fw = FluxDynamics().compute(buffer.snapshot())          # doctest: +SKIP
>>> train_rows = snapshot.features[fw.train_mask]           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import FluxConfig
from ..kernels.flux import flux_weights, warmup

__all__ = ["FluxDynamics", "FluxWeights", "warmup"]


@dataclass(frozen=True, eq=False)
class FluxWeights:
    """Per-sample result of :meth:`FluxDynamics.compute`.

    Attributes
    ----------
    weights : numpy.ndarray
        ``(n,)`` float32 training weights: 0 for held-out rows, mean 1 over trained rows.
    positions : numpy.ndarray
        ``(n,)`` int8 flux positions ``1 + seq % 9``.
    train_mask, holdout_mask : numpy.ndarray
        ``(n,)`` bool; exact complements.
    """

    weights: np.ndarray
    positions: np.ndarray
    train_mask: np.ndarray
    holdout_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_train(self) -> int:
        """Number of trained rows."""
        return int(np.count_nonzero(self.train_mask))

    @property
    def n_holdout(self) -> int:
        """Number of held-out rows."""
        return int(np.count_nonzero(self.holdout_mask))


class FluxDynamics:
    """Computes flux weights and train/holdout masks of snapshots.

    Parameters
    ----------
    config
        The flux parameters (validated by :class:`vortex.config.FluxConfig`).
    """

    def __init__(self, config: FluxConfig | None = None) -> None:
        config = FluxConfig() if config is None else config
        if not isinstance(config, FluxConfig):
            raise TypeError(f"config must be a FluxConfig, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"FluxDynamics({self.config!r})"

    def compute(self, data: Any) -> FluxWeights:
        """Weights of a snapshot's rows (in arrival order).

        Parameters
        ----------
        data
            A :class:`vortex.training.Snapshot`, or any object with ``seq``, ``episode`` and
            ``error`` attributes, or a mapping with those keys (NumPy arrays or sequences).

        Raises
        ------
        ValueError
            Missing or inconsistent columns, an error outside [0, 1], a negative seq.
        """
        columns = []
        for name in ("seq", "episode", "error"):
            try:
                columns.append(data[name] if isinstance(data, Mapping) else getattr(data, name))
            except (KeyError, AttributeError):
                raise ValueError(f"compute() needs a '{name}' column; got {type(data).__name__}") from None
        c = self.config
        return FluxWeights(*flux_weights(*columns, half_life=c.half_life, gamma=c.gamma, lam=c.lam,
                                         w_max=c.w_max, holdout_positions=c.holdout_positions))
