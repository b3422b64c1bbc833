"""Configuration dataclasses.

Every ``*Config`` validates itself in ``__post_init__``: a value that cannot work raises
:class:`vortex.errors.ConfigError` naming the field and the value, so a typo fails at
construction rather than an hour later in a background thread.  A keyword that is not a
field (``RuntimeDetectorConfig(windw_size=5)``) raises :class:`vortex.errors.ConfigKeyError`
naming it and the nearest field; it is a ``ConfigError`` and, as Python's own error for an
unexpected keyword was, a ``TypeError``.  Configs are frozen; derive a changed one with
:func:`dataclasses.replace` (which validates again), or build one from parsed JSON/TOML with
``from_dict``.
"""

from __future__ import annotations

import difflib
import threading
import warnings
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from ._fields import check_bool as _boolean
from ._fields import check_number as _number
from ._fields import fail_field as _fail
from .errors import ConfigError, ConfigKeyError

__all__ = [
    "BackgroundTrainingConfig",
    "DistributedTrainingConfig",
    "FluxConfig",
    "RSIConfig",
    "RuntimeDetectorConfig",
]

_C = TypeVar("_C", bound="_Config")

MAX_WAIT_SECS = threading.TIMEOUT_MAX
"""Longest period a background thread can wait for (``threading.TIMEOUT_MAX``); longer
intervals would make its ``Event.wait`` raise ``OverflowError``."""


def as_dict(config: object) -> dict[str, Any]:
    """The config's fields as a plain dict (nested configs as dicts), for JSON status output."""
    out: dict[str, Any] = {}
    for f in fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        out[f.name] = as_dict(value) if hasattr(value, "__dataclass_fields__") else (
            list(value) if isinstance(value, tuple) else value)
    return out


class _CheckedKeywords(type):
    """Metaclass of the configs: checks the keywords of a construction against the fields.

    Python itself would raise a ``TypeError`` from the generated ``__init__`` for an unknown
    keyword, before ``__post_init__`` could say anything; this runs first and raises
    :class:`ConfigKeyError` naming the keyword and the nearest field. A renamed field's old
    keyword is translated with a ``DeprecationWarning``. Only a call with positional values or
    with a keyword that is not a field takes the slow path.
    """

    def __call__(cls, *args, **kwargs):  # unannotated: type checkers keep the dataclass signature
        known = cls.__dataclass_fields__  # type: ignore[attr-defined]  # every config is a dataclass
        if args or not kwargs.keys() <= known.keys():
            kwargs = _checked_keywords(cls, args, kwargs)
        return super().__call__(*args, **kwargs)


def _checked_keywords(cls: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with renamed fields translated, or ConfigKeyError."""
    order = [f.name for f in fields(cls)]
    name = cls.__name__
    if len(args) > len(order):
        raise ConfigKeyError(f"{name} takes at most {len(order)} positional values; got "
                             f"{len(args)} (pass fields by keyword)")
    out = dict(kwargs)
    for key in kwargs:
        if key in cls.__dataclass_fields__:
            continue
        if key in cls._renamed:
            new, why = cls._renamed[key]
            if new in kwargs:
                raise ConfigKeyError(f"{name}: {key!r} is the old name of {new!r}; give only {new!r}")
            warnings.warn(f"{name}.{key} is deprecated: it is now {new!r} ({why})",
                          DeprecationWarning, stacklevel=3)
            out[new] = out.pop(key)
            continue
        if key in cls._removed:
            raise ConfigKeyError(f"{name}.{key} no longer exists: {cls._removed[key]}")
        near = difflib.get_close_matches(key, order, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"the fields are {', '.join(order)}"
        raise ConfigKeyError(f"{name} has no field {key!r}; {hint}")
    for key in order[:len(args)]:
        if key in out:
            raise ConfigKeyError(f"{name}.{key} is given twice: as positional value "
                                 f"{order.index(key) + 1} and by keyword")
    return out


class _Config(metaclass=_CheckedKeywords):
    """Base of every ``*Config``: keyword checking, renamed fields and :meth:`from_dict`.

    A subclass passes ``renamed={"old_name": ("new_name", "why")}`` to keep accepting a field's
    old keyword (and reading its old attribute) with a ``DeprecationWarning``, and
    ``removed={"old_name": "what to use instead"}`` for a field that no longer exists (refused
    with that message: silently ignoring a setting would be worse).
    """

    _renamed: ClassVar[dict[str, tuple[str, str]]] = {}
    _removed: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, renamed: Mapping[str, tuple[str, str]] | None = None,
                          removed: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._renamed = dict(renamed or {})
        cls._removed = dict(removed or {})
        for old, (new, _) in cls._renamed.items():
            setattr(cls, old, property(_deprecated_getter(cls.__name__, old, new),
                                       doc=f"Deprecated name of :attr:`{new}`."))

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """A config from a mapping of field names to values (parsed JSON or TOML, say).

        Nested configs may be given as mappings, tuples as lists. Unknown keys raise
        :class:`ConfigKeyError`, bad values :class:`ConfigError`, as the constructor does.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict: needs a mapping of field names to "
                              f"values, got {data!r}")
        values = dict(data)
        for key in values:
            if not isinstance(key, str):
                raise ConfigKeyError(f"{cls.__name__}.from_dict: key {key!r} is not a field name")
        for f in fields(cls):  # type: ignore[arg-type]
            value = values.get(f.name)
            nested = f.default_factory if f.default_factory is not MISSING else None
            if isinstance(value, Mapping) and isinstance(nested, type) and issubclass(nested, _Config):
                values[f.name] = nested.from_dict(value)
            elif isinstance(value, list) and isinstance(f.default, tuple):
                values[f.name] = tuple(value)
        return cls(**values)


def _deprecated_getter(cls_name: str, old: str, new: str) -> Any:
    def get(self: Any) -> Any:
        warnings.warn(f"{cls_name}.{old} is deprecated: read {new!r}", DeprecationWarning,
                      stacklevel=2)
        return getattr(self, new)

    return get


@dataclass(frozen=True)
class RuntimeDetectorConfig(_Config):
    """Settings of the :class:`vortex.monitor.RuntimeDetector`.

    Parameters
    ----------
    enabled
        When False, ``record_sample`` still stores samples but the monitor thread raises
        no weaknesses.
    monitor_interval_ms
        Period of the monitor thread's analysis pass.
    window_size
        Number of most recent samples kept in the metric window.
    latency_spike_threshold_ms, latency_spike_count
        A LatencySpike is raised when at least ``latency_spike_count`` of the recent samples
        exceed ``latency_spike_threshold_ms``.
    confidence_drop_threshold
        A ConfidenceDrop is raised when the recent mean confidence is below the baseline mean
        by more than this (absolute).
    confidence_low_threshold
        A ConfidenceLow is raised when the recent mean confidence is below this.
    prediction_error_spike_threshold
        A PredictionErrorSpike is raised when the recent mean error (samples with ground
        truth only) exceeds this.
    memory_pressure_threshold
        A MemoryPressure is raised when resident memory over the process's limit (cgroup limit
        if set, else physical RAM) exceeds this fraction.
    throughput_drop_threshold
        A ThroughputDrop is raised when the request rate of the last tick falls below the
        baseline rate by more than this fraction.
    auto_trigger_rsi
        Whether weaknesses produce :class:`RSITriggerEvent` s for subscribers.
    trigger_cooldown_secs
        Minimum time between two trigger events.
    enable_pattern_recognition, pattern_confidence_threshold, pattern_period_secs, pattern_min_occurrences
        A RecurringPattern is raised when the same weakness type occurred at least
        ``pattern_min_occurrences`` times within ``pattern_period_secs`` and the regularity
        score of those occurrences is at least ``pattern_confidence_threshold``.
    """

    enabled: bool = True
    monitor_interval_ms: int = 1000
    window_size: int = 60
    latency_spike_threshold_ms: float = 500.0
    latency_spike_count: int = 3
    confidence_drop_threshold: float = 0.15
    confidence_low_threshold: float = 0.6
    prediction_error_spike_threshold: float = 0.5
    memory_pressure_threshold: float = 0.85
    throughput_drop_threshold: float = 0.3
    auto_trigger_rsi: bool = True
    trigger_cooldown_secs: float = 300.0
    enable_pattern_recognition: bool = True
    pattern_confidence_threshold: float = 0.7
    pattern_period_secs: float = 3600.0
    pattern_min_occurrences: int = 3

    def __post_init__(self) -> None:
        _boolean(self, "enabled", "auto_trigger_rsi", "enable_pattern_recognition")
        _number(self, "monitor_interval_ms", lo=1, hi=MAX_WAIT_SECS * 1000, integer=True)
        _number(self, "window_size", lo=10, hi=1 << 30, integer=True)
        _number(self, "latency_spike_threshold_ms", lo=0, lo_open=True)
        _number(self, "latency_spike_count", lo=1, integer=True)
        _number(self, "confidence_drop_threshold", lo=0, hi=1, lo_open=True)
        _number(self, "confidence_low_threshold", lo=0, hi=1)
        _number(self, "prediction_error_spike_threshold", lo=0, lo_open=True)
        _number(self, "memory_pressure_threshold", lo=0, hi=1, lo_open=True)
        _number(self, "throughput_drop_threshold", lo=0, hi=1, lo_open=True, hi_open=True)
        _number(self, "trigger_cooldown_secs", lo=0)
        _number(self, "pattern_confidence_threshold", lo=0, hi=1)
        _number(self, "pattern_period_secs", lo=0, lo_open=True)
        _number(self, "pattern_min_occurrences", lo=2, integer=True)
        if self.latency_spike_count > 10:
            _fail(self, "latency_spike_count", self.latency_spike_count,
                  "must be <= 10, the size of the recent slice it is counted in")


@dataclass(frozen=True)
class FluxConfig(_Config):
    """Parameters of :class:`vortex.training.FluxDynamics` (see DESIGN.md, FluxDynamics).

    Parameters
    ----------
    half_life
        Recency half-life of the forward chain, in samples (sequence numbers).
    gamma
        Discount of the backward error chain within an episode, in [0, 1].
    lam
        How much the backward error credit adds to a sample's weight.
    w_max
        Raw weights are clipped at this value before normalisation.
    holdout_positions
        Flux positions (1..9) held out for validation; their weight is 0.
    """

    half_life: float = 2000.0
    gamma: float = 0.9
    lam: float = 1.0
    w_max: float = 10.0
    holdout_positions: tuple[int, ...] = (3, 6, 9)

    def __post_init__(self) -> None:
        _number(self, "half_life", lo=0, lo_open=True)
        _number(self, "gamma", lo=0, hi=1)
        _number(self, "lam", lo=0)
        _number(self, "w_max", lo=0, lo_open=True)
        positions = self.holdout_positions
        if not isinstance(positions, tuple) or not all(
                isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 9 for p in positions):
            _fail(self, "holdout_positions", positions, "must be a tuple of integers in 1..9")
        if len(set(positions)) != len(positions):
            _fail(self, "holdout_positions", positions, "must not repeat a position")
        if len(positions) >= 9:
            _fail(self, "holdout_positions", positions, "must leave at least one position to train on")


@dataclass(frozen=True)
class DistributedTrainingConfig(_Config):
    """Where a training run's ranks run: on the coordinator's machine (``run_url`` None, the
    default), or on ``nnodes`` machines started by ``torchrun`` (see docs/DISTRIBUTED.md).

    Parameters
    ----------
    run_url
        Shared storage (an fsspec URL, ``s3://bucket/runs``) every machine reaches: a run puts
        its snapshot and ``launch.json`` under ``<run_url>/run-<id>/`` and rank 0 its outputs;
        the other machines' ``vortex training join`` agents start their nodes from there. It is
        reached with the registry's storage options (the workers have one set), and the
        registry must be on shared storage too. None: every rank on this machine, as
        ``BackgroundTrainingConfig.world_size`` says.
    nnodes, nproc_per_node
        Machines (torchrun nodes, this one included) and ranks on each: a run has
        ``nnodes * nproc_per_node`` ranks.
    rdzv_endpoint
        ``host:port`` of the rendezvous, an address of *this* machine the others reach (this
        machine's node hosts it).
    join_timeout_secs
        How long a node waits for the others to join; a ``launch.json`` older than this is
        skipped by the join agents.
    """

    run_url: str | None = None
    nnodes: int = 1
    nproc_per_node: int = 1
    rdzv_endpoint: str = "127.0.0.1:29400"
    join_timeout_secs: float = 600.0

    def __post_init__(self) -> None:
        from ._fsspec import is_url

        if self.run_url is not None and not is_url(self.run_url):
            _fail(self, "run_url", self.run_url,
                  "must be None or a URL of shared storage every machine reaches (s3://...)")
        _number(self, "nnodes", lo=1, integer=True)
        _number(self, "nproc_per_node", lo=1, integer=True)
        _number(self, "join_timeout_secs", lo=0, lo_open=True, hi=MAX_WAIT_SECS)
        host, _, port = self.rdzv_endpoint.rpartition(":") if isinstance(self.rdzv_endpoint, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            _fail(self, "rdzv_endpoint", self.rdzv_endpoint, "must be 'host:port' with a port in 1..65535")
        if self.run_url is None and self.nnodes > 1:
            _fail(self, "nnodes", self.nnodes, "needs run_url: the machines share a run through it")


@dataclass(frozen=True)
class BackgroundTrainingConfig(_Config, renamed={
        "watch_regression_threshold": (
            "watch_regression_margin",
            "an absolute margin of error rate and confidence, unlike the relative "
            "RSIConfig.watch_regression_threshold")}):
    """Settings of the :class:`vortex.training.BackgroundTrainingCoordinator`.

    Parameters
    ----------
    enabled
        When False, no trigger starts a run.
    training_interval_secs
        Period of the SCHEDULED trigger.
    min_samples_for_training
        A run needs at least this many buffered samples; the SAMPLE_THRESHOLD trigger fires
        when this many new samples arrived since the last run.
    max_samples_per_batch
        At most this many of the newest samples go into one run's snapshot.
    num_epochs, learning_rate, batch_size
        Optimiser settings of the worker (Adam, weighted mean loss).
    enable_versioning
        Keep every candidate in the registry (False keeps only the active model's lineage).
    checkpoint_dir
        Registry directory; None means ``<home>/models``.
    auto_swap_models
        Swap a candidate in when it validates better (see ``min_improvement_threshold``).
    min_improvement_threshold
        Percent improvement of validation accuracy (classification) or loss (regression)
        the candidate needs over the active model; the lower bound of its confidence interval
        must also be above zero.
    keep_last_n_versions
        Registry cleanup keeps this many newest versions (and always the active one).
    world_size
        Number of DistributedDataParallel worker processes per run.
    buffer_capacity
        Capacity of the sample ring.
    task
        "classification" (cross-entropy, confidence = max softmax) or "regression" (MSE).
    flux
        FluxDynamics parameters.
    distributed
        Where a run's ranks run (:class:`DistributedTrainingConfig`); the default, every rank
        on this machine. With its ``run_url`` set, ``world_size`` is not used.
    worker_threads
        torch intra-op threads per worker process, so the serving process keeps its cores.
    run_timeout_secs
        A run still going after this is killed and recorded as failed.
    swap_waits_for_watch_secs
        Before an automatic swap, wait up to this long while the watch of another component's
        change runs (an applied RSI patch: its requested run can be ready within a second), so
        that change is judged on its own instead of being ended unjudged by the swap; 0 swaps
        at once.
    watch_requests, watch_regression_margin
        After an automatic swap, the coordinator compares the new version's live error over
        ``watch_requests`` requests with the old one's; an error rate higher by more than this
        absolute margin (0.05: five percentage points), or a mean confidence lower by more,
        swaps back. (Formerly ``watch_regression_threshold``, a name that RSIConfig uses for a
        *relative* threshold; the old keyword still works, with a DeprecationWarning.)
    max_version_age_days
        Cleanup also removes versions older than this many days (never the active one).
    confidence_level
        Confidence level of the improvement interval.
    seed
        Base seed of the worker's initialisation and shuffling (run ``k`` uses ``seed + k``).
    worker_nice
        Niceness added to worker processes so the serving process keeps CPU priority.
    worker_sched_idle
        Run workers under the Linux SCHED_IDLE policy (the default): they get CPU only when a
        core would otherwise idle, so serving is not preempted by training (on a saturated
        machine training then waits, up to ``run_timeout_secs``; a forked worker needs tens
        of milliseconds of CPU for a run of a small model). False: only ``worker_nice``.
    fork_server, fork_server_idle_secs
        Fork the worker processes from one process that imported torch once
        (:mod:`vortex.training.forkserver`), instead of starting each as a fresh interpreter
        that spends about 1.7 s of CPU importing torch. The server starts at the first run,
        at the workers' priority (``worker_nice``, ``worker_sched_idle``), and stops with the
        coordinator, or after ``fork_server_idle_secs`` without a run (it holds the memory of
        a process that imported torch, ~400 MB; the next run starts another).
    model_cache_size
        Prepared (loaded, eval'd, warmed-up) models kept in memory, newest first, so a swap
        back to a recent version is instant; 0 rebuilds every time.
    buffer_persist_interval_secs
        While the coordinator is started, its background thread saves the sample buffer to
        ``<home>/buffer.arrow`` this often (when it changed), so a killed process loses at
        most this many seconds of samples; 0 saves only when the coordinator stops.
    """

    enabled: bool = True
    training_interval_secs: float = 3600.0
    min_samples_for_training: int = 100
    max_samples_per_batch: int = 10_000
    num_epochs: int = 3
    learning_rate: float = 1e-3
    batch_size: int = 32
    enable_versioning: bool = True
    checkpoint_dir: str | None = None
    auto_swap_models: bool = True
    min_improvement_threshold: float = 2.0
    keep_last_n_versions: int = 5
    world_size: int = 1
    buffer_capacity: int = 10_000
    task: str = "classification"
    flux: FluxConfig = field(default_factory=FluxConfig)
    distributed: DistributedTrainingConfig = field(default_factory=DistributedTrainingConfig)
    worker_threads: int = 1
    run_timeout_secs: float = 600.0
    watch_requests: int = 200
    swap_waits_for_watch_secs: float = 30.0
    watch_regression_margin: float = 0.05
    max_version_age_days: float | None = None
    confidence_level: float = 0.95
    seed: int = 0
    worker_nice: int = 10
    worker_sched_idle: bool = True
    fork_server: bool = True
    fork_server_idle_secs: float = 600.0
    model_cache_size: int = 3
    buffer_persist_interval_secs: float = 5.0

    def __post_init__(self) -> None:
        _boolean(self, "enabled", "enable_versioning", "auto_swap_models", "worker_sched_idle",
                 "fork_server")
        _number(self, "seed", lo=0, integer=True)
        _number(self, "worker_nice", lo=0, hi=19, integer=True)
        _number(self, "model_cache_size", lo=0, integer=True)
        _number(self, "buffer_persist_interval_secs", lo=0)
        _number(self, "swap_waits_for_watch_secs", lo=0, hi=MAX_WAIT_SECS)
        _number(self, "fork_server_idle_secs", lo=0, hi=MAX_WAIT_SECS)
        _number(self, "training_interval_secs", lo=0, lo_open=True)
        _number(self, "min_samples_for_training", lo=1, integer=True)
        _number(self, "max_samples_per_batch", lo=1, integer=True)
        _number(self, "num_epochs", lo=1, integer=True)
        _number(self, "learning_rate", lo=0, lo_open=True)
        _number(self, "batch_size", lo=1, integer=True)
        _number(self, "min_improvement_threshold", lo=0)
        _number(self, "keep_last_n_versions", lo=1, integer=True)
        _number(self, "world_size", lo=1, integer=True)
        _number(self, "buffer_capacity", lo=1, hi=1 << 32, integer=True)  # the C++ ring's limit
        _number(self, "worker_threads", lo=1, integer=True)
        _number(self, "run_timeout_secs", lo=0, lo_open=True)
        _number(self, "watch_requests", lo=0, integer=True)
        _number(self, "watch_regression_margin", lo=0)
        _number(self, "confidence_level", lo=0, hi=1, lo_open=True, hi_open=True)
        if self.task not in ("classification", "regression"):
            _fail(self, "task", self.task, "must be 'classification' or 'regression'")
        if not isinstance(self.flux, FluxConfig):
            _fail(self, "flux", self.flux, "must be a FluxConfig")
        if not isinstance(self.distributed, DistributedTrainingConfig):
            _fail(self, "distributed", self.distributed, "must be a DistributedTrainingConfig")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            _fail(self, "checkpoint_dir", self.checkpoint_dir, "must be a path string or None")
        if self.max_version_age_days is not None:
            _number(self, "max_version_age_days", lo=0, lo_open=True)
        if self.min_samples_for_training > self.buffer_capacity:
            _fail(self, "min_samples_for_training", self.min_samples_for_training,
                  f"can never be reached with buffer_capacity={self.buffer_capacity}")


_ONE_DETECTOR = ("weaknesses come from the runtime detector's rules alone, with one set of "
                 "thresholds: set RuntimeDetectorConfig.{}")


@dataclass(frozen=True)
class RSIConfig(_Config, removed={
        "min_confidence_threshold": _ONE_DETECTOR.format("confidence_low_threshold"),
        "max_thorough_time_ms": _ONE_DETECTOR.format("latency_spike_threshold_ms"),
        "max_error_rate": _ONE_DETECTOR.format("prediction_error_spike_threshold")}):
    """Settings of the self-modification engine (:class:`vortex.rsi.RSIEngine`).

    Parameters
    ----------
    enabled
        When False, cycles do nothing and triggers are ignored. The weaknesses a cycle acts on
        come from the runtime detector (its thresholds are in :class:`RuntimeDetectorConfig`);
        the former ``min_confidence_threshold``, ``max_thorough_time_ms`` and
        ``max_error_rate`` are refused with a pointer to them.
    max_weaknesses_per_cycle
        At most this many weaknesses (most severe first) are acted on per cycle.
    auto_apply_low_risk, auto_apply_medium_risk
        Which risk levels are applied without approval after they pass the sandbox.
        High and critical never are.
    min_inferences_before_rsi
        A cycle does nothing before this many inferences were recorded.
    cycle_interval_secs
        Period of scheduled cycles.
    watch_requests, watch_regression_threshold
        After an apply, the addressed metric is watched for this many requests; a regression
        beyond this fraction of its baseline (relative: 0.1 = 10 % worse) rolls the proposal
        back.
    apply_waits_for_watch_secs
        Before an automatic apply, wait up to this long while the watch of another
        component's change runs (a model version just swapped in), so that change is judged on
        its own instead of being ended unjudged by the apply; 0 applies at once.
    benchmark_repeats
        Interleaved baseline/candidate benchmark runs per sandbox test.
    confidence_level
        Confidence level of the paired benchmark difference.
    """

    enabled: bool = False
    max_weaknesses_per_cycle: int = 3
    auto_apply_low_risk: bool = True
    auto_apply_medium_risk: bool = False
    min_inferences_before_rsi: int = 100
    cycle_interval_secs: float = 3600.0
    watch_requests: int = 200
    watch_regression_threshold: float = 0.1
    apply_waits_for_watch_secs: float = 30.0
    benchmark_repeats: int = 5
    confidence_level: float = 0.95

    def __post_init__(self) -> None:
        _boolean(self, "enabled", "auto_apply_low_risk", "auto_apply_medium_risk")
        _number(self, "max_weaknesses_per_cycle", lo=1, integer=True)
        _number(self, "min_inferences_before_rsi", lo=0, integer=True)
        _number(self, "cycle_interval_secs", lo=0, lo_open=True, hi=MAX_WAIT_SECS)
        _number(self, "watch_requests", lo=0, integer=True)
        _number(self, "watch_regression_threshold", lo=0)
        _number(self, "apply_waits_for_watch_secs", lo=0, hi=MAX_WAIT_SECS)
        _number(self, "benchmark_repeats", lo=2, integer=True)
        _number(self, "confidence_level", lo=0, hi=1, lo_open=True, hi_open=True)
