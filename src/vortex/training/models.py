"""Small model factories that a training worker can import by name.

The background trainer rebuilds the served model in a separate process from a
``"package.module:function"`` string, so the factory must live in an importable module.
:func:`mlp` is such a factory, useful as-is for tabular classification and regression:
``model_factory="vortex.training.models:mlp"`` with
``factory_kwargs={"in_features": 64, "hidden": 64, "out_features": 10}``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["build_model", "mlp", "resolve_factory"]


def mlp(in_features: int, hidden: int | Sequence[int] = 64, out_features: int = 1,
        dropout: float = 0.0, seed: int | None = None) -> Any:
    """A multilayer perceptron: ``Linear -> ReLU (-> Dropout)`` per hidden layer, then ``Linear``.

    Parameters
    ----------
    in_features, out_features
        Input and output widths (``out_features`` = number of classes for classification).
    hidden
        Width of the hidden layer, or a sequence of widths for several.
    dropout
        Dropout probability after each hidden activation (0 disables it).
    seed
        If given, the initial weights are drawn from a generator with this seed, so the same
        call returns the same model in any process.
    """
    import torch
    from torch import nn

    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    for name, value in (("in_features", in_features), ("out_features", out_features), *(
            (f"hidden[{i}]", w) for i, w in enumerate(widths))):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r}: must be in [0, 1)")
    layers: list[nn.Module] = []
    width = in_features
    for w in widths:
        layers += [nn.Linear(width, w), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = w
    layers.append(nn.Linear(width, out_features))
    if seed is None:
        return nn.Sequential(*layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in layers:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    return nn.Sequential(*layers)


def resolve_factory(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function.

    Raises ValueError for a malformed spec, ImportError / AttributeError if it does not resolve.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"model_factory={spec!r}: must look like 'package.module:function'")
    module_name, attr = spec.split(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model_factory={spec!r} resolves to a non-callable {type(obj).__name__}")
    return obj


def build_model(spec: str, kwargs: dict[str, Any] | None = None) -> Any:
    """Call the factory named by ``spec`` with ``kwargs`` and return the module."""
    return resolve_factory(spec)(**(kwargs or {}))
