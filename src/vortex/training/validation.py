"""Candidate-vs-active validation on the same held-out samples, with a confidence interval.

Both models are scored per held-out sample (classification: 1 if the prediction is right,
else 0; regression: the squared error).  The improvement is relative, in percent:

* classification: ``100 * (acc_candidate - acc_active) / acc_active``
* regression: ``100 * (mse_active - mse_candidate) / mse_active``

Its confidence interval comes from a paired bootstrap
(:func:`vortex.stats.paired_bootstrap_interval`): the same resampled indices are used
for both models, so the interval reflects the per-sample *difference* between them, not two
independent noises.  A candidate is promoted only when the improvement exceeds the threshold
and the interval's lower bound is above zero, so a lucky small holdout does not promote a
worse model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..stats import paired_bootstrap_interval

__all__ = ["ValidationResult", "compare_models", "relative_improvement", "should_swap"]

_EPS = 1e-12


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of comparing a candidate with the active model on one held-out set.

    Attributes
    ----------
    n
        Number of held-out samples both models were scored on.
    task
        "classification" or "regression".
    candidate_loss, active_loss
        Mean loss (cross-entropy or MSE) of each model on the held-out samples.
    candidate_accuracy, active_accuracy
        Accuracy of each model (classification; NaN for regression).
    improvement_pct
        Relative improvement of the candidate, in percent (see the module docstring).
    ci_low, ci_high
        Paired-bootstrap confidence interval of ``improvement_pct``.
    confidence_level
        Level of that interval.
    """

    n: int
    task: str
    candidate_loss: float
    active_loss: float
    candidate_accuracy: float
    active_accuracy: float
    improvement_pct: float
    ci_low: float
    ci_high: float
    confidence_level: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def relative_improvement(candidate: np.ndarray, active: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Percent improvement of ``candidate`` over ``active`` (arrays of means, broadcast)."""
    candidate = np.asarray(candidate, dtype=np.float64)
    active = np.asarray(active, dtype=np.float64)
    diff = candidate - active if higher_is_better else active - candidate
    return 100.0 * diff / np.maximum(np.abs(active), _EPS)


def compare_models(candidate_scores: np.ndarray, active_scores: np.ndarray, *,
                   task: str, candidate_loss: float, active_loss: float,
                   confidence_level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> ValidationResult:
    """Compare per-sample scores of two models on the same held-out samples.

    Parameters
    ----------
    candidate_scores, active_scores
        Per-sample scores, same length and order: correctness in {0, 1} for classification
        (higher is better), squared error for regression (lower is better).
    task
        "classification" or "regression".
    candidate_loss, active_loss
        Mean held-out losses, reported as they are.
    confidence_level
        Level of the paired-bootstrap interval, in (0, 1).
    resamples
        Bootstrap resamples.
    seed
        Seed of the resampling, so a result is reproducible.
    """
    c = np.asarray(candidate_scores, dtype=np.float64).ravel()
    a = np.asarray(active_scores, dtype=np.float64).ravel()
    if c.shape != a.shape:
        raise ValueError(f"candidate_scores has {c.size} samples but active_scores has {a.size}")
    if c.size == 0:
        raise ValueError("no held-out samples to validate on (candidate_scores is empty)")
    if task not in ("classification", "regression"):
        raise ValueError(f"task={task!r}: must be 'classification' or 'regression'")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level={confidence_level!r}: must be in (0, 1)")
    higher = task == "classification"
    improvement = float(relative_improvement(c.mean(), a.mean(), higher))
    lo, hi = paired_bootstrap_interval(
        c, a, lambda cm, am: relative_improvement(cm, am, higher),
        confidence=confidence_level, resamples=resamples, seed=seed)
    return ValidationResult(
        n=int(c.size), task=task, candidate_loss=float(candidate_loss), active_loss=float(active_loss),
        candidate_accuracy=float(c.mean()) if higher else float("nan"),
        active_accuracy=float(a.mean()) if higher else float("nan"),
        improvement_pct=improvement, ci_low=lo, ci_high=hi,
        confidence_level=float(confidence_level))


def should_swap(result: ValidationResult, min_improvement_pct: float) -> bool:
    """True when the improvement exceeds ``min_improvement_pct`` and its CI's lower bound is > 0."""
    return bool(result.improvement_pct > min_improvement_pct and result.ci_low > 0.0)
