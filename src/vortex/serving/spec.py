"""What every process of a served model needs to know: :class:`ServiceSpec`.

The serving workers, the control plane and the ``vortex control`` sidecar are separate
processes; each builds its part from the same spec, which therefore lives in an importable
module (``vortex control --spec package.module:SPEC``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["ServiceSpec", "load_spec"]


@dataclass(frozen=True)
class ServiceSpec:
    """A model served by several worker processes and one control plane.

    Attributes
    ----------
    home
        The Vortex home every process shares.
    model_factory
        ``"package.module:function"`` building the (untrained) model; workers load the
        registry's active weights into it, training workers import it.
    feature_dim
        Length of one input vector.
    n_classes
        Classes (classification), or 0 for regression.
    initial_model
        ``() -> torch.nn.Module`` served (and registered by the control plane) while the
        registry has no version yet; default: ``model_factory``'s untrained model.
    configure
        ``(orchestrator) -> None`` attaching the slow parts (detector, background trainer,
        self-modification) to the control plane's :class:`vortex.Orchestrator`.
    tunables
        The tunables file the workers follow (RSI applies change it), or None.
    modes
        Serving modes as in :class:`vortex.Orchestrator`.
    factory_kwargs
        Keyword arguments of ``model_factory``.
    feedback_ttl_secs
        Feedback later than this after its request is refused.
    """

    home: str
    model_factory: str
    feature_dim: int
    n_classes: int
    initial_model: Callable[[], Any] | None = None
    configure: Callable[[Any], None] | None = None
    tunables: str | None = None
    modes: Mapping[str, Callable[[Any, Any], Any]] | None = None
    factory_kwargs: Mapping[str, Any] = field(default_factory=dict)
    feedback_ttl_secs: float = 3600.0

    def __post_init__(self) -> None:
        if not isinstance(self.home, (str, os.PathLike)) or not os.fspath(self.home):
            raise ConfigError(f"ServiceSpec.home={self.home!r}: must be a directory path")
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 0 \
                or self.n_classes == 1:
            raise ConfigError(f"ServiceSpec.n_classes={self.n_classes!r}: must be 0 (regression) or >= 2")
        if not (isinstance(self.feedback_ttl_secs, (int, float)) and self.feedback_ttl_secs > 0):
            raise ConfigError(f"ServiceSpec.feedback_ttl_secs={self.feedback_ttl_secs!r}: must be > 0")

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return "classification" if self.n_classes else "regression"

    def with_home(self, home: str | os.PathLike[str]) -> ServiceSpec:
        """The same spec on another home."""
        from dataclasses import replace

        return replace(self, home=os.fspath(home))

    def build_initial_model(self) -> Any:
        """The model served before the registry has a version."""
        if self.initial_model is not None:
            return self.initial_model()
        from ..training.models import build_model

        return build_model(self.model_factory, dict(self.factory_kwargs))


def load_spec(ref: str) -> ServiceSpec:
    """The :class:`ServiceSpec` named ``"package.module:NAME"`` (NAME a spec or a function
    returning one); ConfigError naming ``ref`` otherwise."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"spec={ref!r}: must be 'package.module:NAME'")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"spec={ref!r}: cannot be imported ({exc})") from exc
    if callable(value) and not isinstance(value, ServiceSpec):
        try:
            value = value()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"spec={ref!r}: calling it to get the spec failed ({exc})") from exc
    if not isinstance(value, ServiceSpec):
        raise ConfigError(f"spec={ref!r}: is a {type(value).__name__}, not a ServiceSpec")
    return value
