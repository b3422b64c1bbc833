"""The ``[tool.vortex]`` table of a target tree's ``pyproject.toml``.

Example::

    [tool.vortex]
    test_command = ["{python}", "-m", "pytest", "-q", "tests"]
    benchmark_command = ["{python}", "bench.py"]      # prints one JSON object (see below)
    judge = ["tests", "bench.py"]                     # always taken from the original tree
    protected = ["pyproject.toml", "tests/**", "bench.py"]
    pythonpath = ["."]                                # relative to the tree, for the commands

    [tool.vortex.benchmark]
    primary = "latency_ms"                            # metric judged when no weakness maps
    metrics = { confidence_low = "nll", memory_pressure = "cache_kb" }

    [tool.vortex.sandbox]
    timeout_secs = 60
    memory_mb = 2048          # RLIMIT_AS, per process
    cpu_secs = 60             # RLIMIT_CPU, per process
    max_processes = 64        # RLIMIT_NPROC: processes and threads the command may add to
                              # those its host uid has when it starts
    max_file_mb = 64          # RLIMIT_FSIZE
    max_open_files = 256      # RLIMIT_NOFILE
    tmp_mb = 256              # byte quota of the writable /tmp (a size-capped tmpfs)
    shm_mb = 64               # byte quota of /dev/shm
    max_output_kb = 256       # printed output kept per command (head and tail)
    require_isolation = false # true: no bwrap jail here = no verdict (errored), never unjailed
    uid = 65534               # host uid/gid of jailed commands when Vortex runs as root
    gid = 65534
    env_allow = ["LANG"]      # extra variables passed through (PATH, HOME=/tmp, ... always)

    [[tool.vortex.tunables]]
    name = "ensemble_size"
    file = "service/tunables.toml"
    type = "int"              # int | float | bool | choice
    min = 1
    max = 64
    step = 2                  # int/float: multiplicative factor when ``scale = "log"``, else added
    scale = "log"
    addresses = { latency_spike = "decrease", throughput_drop = "decrease" }

    [tool.vortex.command_proposer]
    command = ["my-llm-tool", "--diff"]
    timeout_secs = 120
    weaknesses = ["latency_spike"]      # default: every kind

``{python}`` in a command is replaced by the interpreter running Vortex. The judge runs both
commands itself (see :mod:`vortex.rsi.judge`), so their shape is fixed: the test command is
``["{python}", "-m", "pytest", *args]`` and every test path it names lies in ``judge``; the
benchmark command is ``["{python}", "<script>", *args]`` with the script in ``judge``. The script
prints exactly one JSON object ``{"metric": {"value": float, "better": "lower" | "higher"}, ...}``
(other printed lines are allowed, a second JSON object is not).
A tunables file is TOML with one ``name = value`` line per tunable (see :mod:`vortex.tunables`).
"""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from .._fields import check_bool, check_number, check_strings, fail, fail_field, strings
from ..errors import ConfigError
from ..monitor.weaknesses import WeaknessType

__all__ = [
    "CommandProposerSettings",
    "SandboxLimits",
    "TunableSpec",
    "VortexSettings",
    "load_settings",
]

_TYPES = ("int", "float", "bool", "choice")
_DIRECTIONS = ("increase", "decrease", "true", "false")


_PREFIX = "[tool.vortex] "


def _fail(key: str, value: Any, why: str) -> None:
    fail(_PREFIX + key, value, why)


def _str_list(key: str, value: Any, *, required: bool = False) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    return strings(_PREFIX + key, value, required=required)


def _weakness_kinds() -> frozenset[str]:
    return frozenset(w.value for w in WeaknessType)


def _rel_path(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        _fail(key, value, "must be a non-empty relative path")
    norm = os.path.normpath(value)
    if os.path.isabs(value) or norm == ".." or norm.startswith("../"):
        _fail(key, value, "must be a path inside the tree")
    return norm


@dataclass(frozen=True)
class TunableSpec:
    """One declared tunable: where it lives, its type and bounds, what it addresses."""

    name: str
    file: str
    type: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    step: float = 1.0
    scale: str = "linear"
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def field_prefix(self) -> str:
        """How messages name this tunable's fields (``[tool.vortex] tunables.<name>.``)."""
        return f"{_PREFIX}tunables.{self.name}."

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            _fail("tunables.name", self.name, "must be an identifier")
        if not isinstance(self.file, str) or _rel_path(f"tunables.{self.name}.file", self.file) != self.file:
            fail_field(self, "file", self.file, "must be a normalised path inside the tree")
        if self.type not in _TYPES:
            fail_field(self, "type", self.type, f"must be one of {_TYPES}")
        if self.type in ("int", "float"):
            for k in ("min", "max"):
                v = getattr(self, k)
                if v is None:
                    fail_field(self, k, v, "is required for a numeric tunable")
                check_number(self, k, integer=self.type == "int")
            if self.min >= self.max:  # type: ignore[operator]
                fail_field(self, "min", self.min, f"must be below max={self.max}")
        if not isinstance(self.choices, tuple) or (self.type == "choice" and len(self.choices) < 2):
            fail_field(self, "choices", self.choices, "must list at least two values")
        if self.scale not in ("linear", "log"):
            fail_field(self, "scale", self.scale, "must be 'linear' or 'log'")
        check_number(self, "step", lo=1 if self.scale == "log" else 0, lo_open=True)
        if not isinstance(self.addresses, dict) or not self.addresses:
            fail_field(self, "addresses", self.addresses, "must map weakness kinds to a direction")
        allowed = ("true", "false") if self.type == "bool" else ("increase", "decrease")
        for kind, direction in self.addresses.items():
            if kind not in _weakness_kinds():
                fail_field(self, f"addresses.{kind}", direction,
                           f"unknown weakness kind; one of {sorted(_weakness_kinds())}")
            if direction not in allowed:
                fail_field(self, f"addresses.{kind}", direction, f"must be one of {allowed}")

    def in_bounds(self, value: Any) -> bool:
        """Whether ``value`` has the declared type and lies inside the bounds / choices."""
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def to_dict(self) -> dict[str, Any]:
        """The declaration as a JSON-ready dict (what a command proposer's report lists)."""
        return {"name": self.name, "file": self.file, "type": self.type, "min": self.min,
                "max": self.max, "choices": list(self.choices), "step": self.step,
                "scale": self.scale, "addresses": dict(self.addresses)}


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of every sandboxed command, and how strict the isolation must be
    (see :mod:`vortex.rsi.jail`).
    """

    timeout_secs: float = 120.0
    memory_mb: int = 2048
    cpu_secs: int = 120
    max_processes: int = 64
    max_file_mb: int = 64
    max_open_files: int = 256
    tmp_mb: int = 256
    shm_mb: int = 64
    max_output_kb: int = 256
    require_isolation: bool = False
    uid: int = 65534
    gid: int = 65534
    env_allow: tuple[str, ...] = ()

    field_prefix: ClassVar[str] = _PREFIX + "sandbox."

    def __post_init__(self) -> None:
        check_number(self, "timeout_secs", lo=0, lo_open=True)
        for f in fields(self):
            if f.type == "int":
                check_number(self, f.name, lo=0, lo_open=True, integer=True)
        check_bool(self, "require_isolation")
        check_strings(self, "env_allow")
        for name in ("uid", "gid"):
            if getattr(self, name) == 0:
                fail_field(self, name, 0, "must not be root")


@dataclass(frozen=True)
class CommandProposerSettings:
    """An external program that reads a weakness report (JSON on stdin) and prints a diff."""

    command: tuple[str, ...]
    timeout_secs: float = 120.0
    weaknesses: tuple[str, ...] = ()

    field_prefix: ClassVar[str] = _PREFIX + "command_proposer."

    def __post_init__(self) -> None:
        check_strings(self, "command", required=True)
        check_number(self, "timeout_secs", lo=0, lo_open=True)
        check_strings(self, "weaknesses")
        for kind in self.weaknesses:
            if kind not in _weakness_kinds():
                fail_field(self, "weaknesses", kind, "unknown weakness kind")


@dataclass(frozen=True)
class VortexSettings:
    """Parsed and validated ``[tool.vortex]`` settings of one target tree."""

    root: str
    test_command: tuple[str, ...]
    benchmark_command: tuple[str, ...] = ()
    judge: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    pythonpath: tuple[str, ...] = ()
    primary_metric: str | None = None
    weakness_metrics: dict[str, str] = field(default_factory=dict)
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)
    tunables: tuple[TunableSpec, ...] = ()
    command_proposer: CommandProposerSettings | None = None

    field_prefix: ClassVar[str] = _PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.root, str) or not os.path.isabs(self.root):
            fail_field(self, "root", self.root, "must be an absolute path")
        check_strings(self, "test_command", required=True)
        for name in ("benchmark_command", "judge", "protected", "pythonpath"):
            check_strings(self, name)
        for name in ("judge", "pythonpath"):
            for p in getattr(self, name):
                if _rel_path(name, p) != p:
                    fail_field(self, name, p, "must be a normalised path inside the tree")
        _check_commands(self.test_command, self.benchmark_command, self.judge)
        if self.primary_metric is not None and (not isinstance(self.primary_metric, str)
                                                or not self.primary_metric):
            fail_field(self, "benchmark.primary", self.primary_metric, "must be a metric name")
        wm = self.weakness_metrics
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            fail_field(self, "benchmark.metrics", wm, "must map weakness kinds to metric names")
        for kind in wm:
            if kind not in _weakness_kinds():
                fail_field(self, f"benchmark.metrics.{kind}", wm[kind], "unknown weakness kind")
        if not isinstance(self.sandbox, SandboxLimits):
            fail_field(self, "sandbox", self.sandbox, "must be a SandboxLimits")
        if not isinstance(self.tunables, tuple) or not all(isinstance(t, TunableSpec)
                                                           for t in self.tunables):
            fail_field(self, "tunables", self.tunables, "must be a tuple of TunableSpec")
        names = [t.name for t in self.tunables]
        if len(set(names)) != len(names):
            fail_field(self, "tunables", names, "names must be unique")
        if not isinstance(self.command_proposer, (CommandProposerSettings, type(None))):
            fail_field(self, "command_proposer", self.command_proposer,
                       "must be a CommandProposerSettings or None")

    def tunable(self, name: str) -> TunableSpec:
        """The declared tunable called ``name``.

        Raises
        ------
        KeyError
            No tunable of that name is declared.
        """
        for t in self.tunables:
            if t.name == name:
                return t
        raise KeyError(name)

    def metric_for(self, weakness: str) -> str | None:
        """The benchmark metric that judges a proposal addressing this weakness kind."""
        return self.weakness_metrics.get(weakness, self.primary_metric)

    def expand(self, command: tuple[str, ...]) -> list[str]:
        """The command with ``{python}`` replaced by the running interpreter."""
        return [part.replace("{python}", sys.executable) for part in command]

    @property
    def pytest_args(self) -> list[str]:
        """The test command's arguments after ``{python} -m pytest``."""
        return list(self.test_command[3:])

    @property
    def benchmark_script(self) -> tuple[str, list[str]] | None:
        """(script path relative to the tree, its arguments), or None without a benchmark."""
        if not self.benchmark_command:
            return None
        return self.benchmark_command[1], list(self.benchmark_command[2:])

    def in_judge(self, rel: str) -> bool:
        """Whether the tree-relative path ``rel`` lies in (or is) a judge path."""
        return _within(rel, self.judge)


def _tunable(i: int, raw: Any) -> TunableSpec:
    key = f"tunables[{i}]"
    if not isinstance(raw, dict):
        _fail(key, raw, "must be a table")
    unknown = set(raw) - {f.name for f in fields(TunableSpec)}
    if unknown:
        _fail(f"{key}.{sorted(unknown)[0]}", raw[sorted(unknown)[0]], "unknown key")
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        _fail(f"{key}.name", name, "must be an identifier")
    key = f"tunables.{name}"
    choices = raw.get("choices", [])
    if not isinstance(choices, list):
        _fail(f"{key}.choices", choices, "must be a list")
    scale = raw.get("scale", "linear")
    return TunableSpec(name=name, file=_rel_path(f"{key}.file", raw.get("file")),
                       type=raw.get("type"), min=raw.get("min"), max=raw.get("max"),
                       choices=tuple(choices), step=raw.get("step", 2 if scale == "log" else 1),
                       scale=scale, addresses=raw.get("addresses"))


def _within(rel: str, paths: tuple[str, ...]) -> bool:
    rel = os.path.normpath(rel)
    return any(p == "." or rel == p or rel.startswith(p + "/") for p in paths)


def _check_commands(test: tuple[str, ...], bench: tuple[str, ...], judge: tuple[str, ...]) -> None:
    """The judge runs pytest and the benchmark script itself (from the original tree, under a
    Vortex runner), so it must know what they are.
    """
    if list(test[:3]) != ["{python}", "-m", "pytest"]:
        _fail("test_command", list(test), 'must be ["{python}", "-m", "pytest", ...]: the '
              "judge runs pytest itself, configured from the original tree")
    if bench:
        if len(bench) < 2 or bench[0] != "{python}" or bench[1].startswith("-"):
            _fail("benchmark_command", list(bench), 'must be ["{python}", "<script>", ...]')
        script = _rel_path("benchmark_command", bench[1])
        if not _within(script, judge):
            _fail("benchmark_command", list(bench), f"the script {script!r} must lie in a judge "
                  "path (it is always taken from the original tree)")


def load_settings(root: str | os.PathLike[str]) -> VortexSettings:
    """Read and validate ``<root>/pyproject.toml``'s ``[tool.vortex]`` table.

    Raises
    ------
    ConfigError
        The file or table is missing, or a key is malformed (the message names the key).
    """
    root = os.path.realpath(os.fspath(root))
    path = os.path.join(root, "pyproject.toml")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no pyproject.toml; the target tree needs a [tool.vortex] table") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    tv = doc.get("tool", {}).get("vortex")
    if not isinstance(tv, dict):
        raise ConfigError(f"{path}: missing [tool.vortex] table")
    known = {"test_command", "benchmark_command", "judge", "protected", "pythonpath", "benchmark",
             "sandbox", "tunables", "command_proposer"}
    for k in tv:
        if k not in known:
            _fail(k, tv[k], f"unknown key; expected one of {sorted(known)}")
    if "test_command" not in tv:
        _fail("test_command", None, "is required")
    b = _table(tv, "benchmark")
    s = _table(tv, "sandbox")
    for k in s:
        if k not in {f.name for f in fields(SandboxLimits)}:
            _fail(f"sandbox.{k}", s[k], "unknown key")
    raw_t = tv.get("tunables", [])
    if not isinstance(raw_t, list):
        _fail("tunables", raw_t, "must be an array of tables ([[tool.vortex.tunables]])")
    cp = tv.get("command_proposer")
    if cp is not None and not isinstance(cp, dict):
        _fail("command_proposer", cp, "must be a table")
    # Each dataclass checks its own fields (naming them as the table spells them).
    return VortexSettings(
        root=root, test_command=_tuple(tv["test_command"]),
        benchmark_command=_tuple(tv.get("benchmark_command", ())),
        judge=tuple(_rel_path("judge", p) for p in _str_list("judge", tv.get("judge"))),
        protected=_tuple(tv.get("protected", ())),
        pythonpath=tuple(_rel_path("pythonpath", p)
                         for p in _str_list("pythonpath", tv.get("pythonpath"))),
        primary_metric=b.get("primary"), weakness_metrics=b.get("metrics", {}),
        sandbox=SandboxLimits(**{k: _tuple(v) for k, v in s.items()}),
        tunables=tuple(_tunable(i, t) for i, t in enumerate(raw_t)),
        command_proposer=None if cp is None else CommandProposerSettings(
            command=_tuple(cp.get("command")), timeout_secs=cp.get("timeout_secs", 120.0),
            weaknesses=_tuple(cp.get("weaknesses", ()))))


def _table(tv: dict[str, Any], key: str) -> dict[str, Any]:
    value = tv.get(key, {})
    if not isinstance(value, dict):
        _fail(key, value, "must be a table")
    return value


def _tuple(value: Any) -> Any:
    """A TOML array as the tuple the dataclasses hold (anything else as it is, to be refused)."""
    return tuple(value) if isinstance(value, list) else value
