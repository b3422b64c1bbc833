"""What every process of a served model needs to know: :class:`ServiceSpec`.

The serving workers, the control plane and the ``vortex control`` sidecar are separate
processes; each builds its part from the same spec, which therefore lives in an importable
module (``vortex control --spec package.module:SPEC``).
"""

from __future__ import annotations

import importlib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..training.registry import ModelRegistry

__all__ = ["ServiceSpec", "load_spec"]

_REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
    fleet_url
        Replicas on several machines (docs/DISTRIBUTED.md): fsspec URL of the storage they share
        (``s3://bucket/fleet``; it must take conditional writes). The control plane then runs
        only where the machine's control-plane lock and the lease ``<fleet_url>/control.lease``
        are held; the other machines spool their samples to ``<fleet_url>/spool/<replica>.arrow``,
        which it merges; the model registry is shared too (``registry_url``). None (default):
        one machine, nothing shared.
    registry_url
        fsspec URL of the model registry every machine's workers follow and the control plane
        writes (training's registrations, swaps, rollbacks, cleanup). Default: with
        ``fleet_url``, ``<fleet_url>/models``; without, None: the home's own directory
        (``<home>/models``, the local store's locks and appends). A URL without ``fleet_url``
        puts one machine's registry on shared storage.
    storage_options
        Options of the fsspec filesystem of ``fleet_url`` and ``registry_url`` (endpoint,
        credentials...).
    replica_id
        This machine's name in the fleet (letters, digits, ``._-``); default: the host name.
    lease_ttl_secs
        A lease write keeps the lease this long (:class:`vortex.serving.lease.Lease`).
    spool_interval_secs
        Seconds between two writes of a replica's spool (what a lost machine loses at most),
        and between two merges by the control plane.
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
    fleet_url: str | None = None
    registry_url: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    replica_id: str | None = None
    lease_ttl_secs: float = 10.0
    spool_interval_secs: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.home, (str, os.PathLike)) or not os.fspath(self.home):
            raise ConfigError(f"ServiceSpec.home={self.home!r}: must be a directory path")
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 0 \
                or self.n_classes == 1:
            raise ConfigError(f"ServiceSpec.n_classes={self.n_classes!r}: must be 0 (regression) or >= 2")
        if not (isinstance(self.feedback_ttl_secs, (int, float)) and self.feedback_ttl_secs > 0):
            raise ConfigError(f"ServiceSpec.feedback_ttl_secs={self.feedback_ttl_secs!r}: must be > 0")
        from .._fsspec import is_url

        if self.fleet_url is not None and not is_url(self.fleet_url):
            raise ConfigError(f"ServiceSpec.fleet_url={self.fleet_url!r}: must be a URL (s3://bucket/prefix)")
        if self.registry_url is not None:
            if not is_url(self.registry_url):
                raise ConfigError(f"ServiceSpec.registry_url={self.registry_url!r}: must be a URL "
                                  "(s3://bucket/prefix); leave it None for the home's own registry")
            if self.fleet_url is not None and self.registry_url.rstrip("/") == self.fleet_url.rstrip("/"):
                raise ConfigError(f"ServiceSpec.registry_url={self.registry_url!r}: must not be fleet_url "
                                  "itself (the lease and spools live there): use a prefix of its own, "
                                  "such as <fleet_url>/models")
        if not isinstance(self.storage_options, Mapping):
            raise ConfigError(f"ServiceSpec.storage_options={self.storage_options!r}: must be a mapping")
        if self.replica_id is not None and not (isinstance(self.replica_id, str)
                                                and _REPLICA_ID.fullmatch(self.replica_id)):
            raise ConfigError(f"ServiceSpec.replica_id={self.replica_id!r}: must be letters, digits, '.', '_', '-'")
        for name in ("lease_ttl_secs", "spool_interval_secs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"ServiceSpec.{name}={value!r}: must be > 0")

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return "classification" if self.n_classes else "regression"

    @property
    def replica(self) -> str:
        """The name of this machine in the fleet (``replica_id``, or the host name)."""
        return self.replica_id or re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())

    @property
    def shared_registry(self) -> str | None:
        """URL of the model registry on shared storage (``registry_url``, or
        ``<fleet_url>/models``), or None: the home's own registry.
        """
        if self.registry_url is not None:
            return self.registry_url.rstrip("/")
        return f"{self.fleet_url.rstrip('/')}/models" if self.fleet_url is not None else None

    def open_registry(self) -> ModelRegistry:
        """The :class:`~vortex.training.registry.ModelRegistry` of the service: on shared
        storage (:attr:`shared_registry`) or the home's ``models`` directory.
        """
        from ..home import HomeLayout
        from ..training.registry import ModelRegistry

        url = self.shared_registry
        if url is None:
            return ModelRegistry(HomeLayout(os.path.abspath(self.home)).models)
        return ModelRegistry(url, storage_options=dict(self.storage_options))

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
    returning one); ConfigError naming ``ref`` otherwise.
    """
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
