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

import math
import os
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any

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


def _fail(key: str, value: Any, why: str) -> None:
    raise ConfigError(f"[tool.vortex] {key}={value!r}: {why}")


def _str_list(key: str, value: Any, *, required: bool = False) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or (not value and required) or not all(
            isinstance(v, str) and v for v in value):
        _fail(key, value, "must be a non-empty list of strings" if required
              else "must be a list of non-empty strings")
    return tuple(value)


def _num(key: str, value: Any, *, lo: float = 0.0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, value, "must be a finite number")
    if integer and not isinstance(value, int):
        _fail(key, value, "must be an integer")
    if value <= lo:
        _fail(key, value, f"must be > {lo}")
    return value


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


@dataclass(frozen=True)
class CommandProposerSettings:
    """An external program that reads a weakness report (JSON on stdin) and prints a diff."""

    command: tuple[str, ...]
    timeout_secs: float = 120.0
    weaknesses: tuple[str, ...] = ()


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

    def tunable(self, name: str) -> TunableSpec:
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
    unknown = set(raw) - {"name", "file", "type", "min", "max", "choices", "step", "scale",
                          "addresses"}
    if unknown:
        _fail(f"{key}.{sorted(unknown)[0]}", raw[sorted(unknown)[0]], "unknown key")
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        _fail(f"{key}.name", name, "must be an identifier")
    key = f"tunables.{name}"
    file = _rel_path(f"{key}.file", raw.get("file"))
    typ = raw.get("type")
    if typ not in _TYPES:
        _fail(f"{key}.type", typ, f"must be one of {_TYPES}")
    lo, hi, choices = raw.get("min"), raw.get("max"), raw.get("choices", [])
    if typ in ("int", "float"):
        for k, v in (("min", lo), ("max", hi)):
            if v is None:
                _fail(f"{key}.{k}", v, "is required for a numeric tunable")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                    typ == "int" and not isinstance(v, int)):
                _fail(f"{key}.{k}", v, f"must be {'an integer' if typ == 'int' else 'a number'}")
        if lo >= hi:
            _fail(f"{key}.min", lo, f"must be below max={hi}")
    if typ == "choice" and (not isinstance(choices, list) or len(choices) < 2):
        _fail(f"{key}.choices", choices, "must list at least two values")
    scale = raw.get("scale", "linear")
    if scale not in ("linear", "log"):
        _fail(f"{key}.scale", scale, "must be 'linear' or 'log'")
    step = _num(f"{key}.step", raw.get("step", 2 if scale == "log" else 1))
    if scale == "log" and step <= 1:
        _fail(f"{key}.step", step, "must be > 1 for scale='log' (a factor)")
    addresses = raw.get("addresses")
    if not isinstance(addresses, dict) or not addresses:
        _fail(f"{key}.addresses", addresses, "must map weakness kinds to a direction")
    kinds = {w.value for w in WeaknessType}
    for kind, direction in addresses.items():
        if kind not in kinds:
            _fail(f"{key}.addresses.{kind}", direction, f"unknown weakness kind; one of {sorted(kinds)}")
        allowed = ("true", "false") if typ == "bool" else ("increase", "decrease")
        if direction not in allowed:
            _fail(f"{key}.addresses.{kind}", direction, f"must be one of {allowed}")
    return TunableSpec(name=name, file=file, type=typ, min=lo, max=hi, choices=tuple(choices),
                       step=step, scale=scale, addresses=dict(addresses))


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
    test_command = _str_list("test_command", tv["test_command"], required=True)
    bench = _str_list("benchmark_command", tv.get("benchmark_command"))
    judge = tuple(_rel_path("judge", p) for p in _str_list("judge", tv.get("judge")))
    _check_commands(test_command, bench, judge)
    protected = _str_list("protected", tv.get("protected"))
    pythonpath = tuple(_rel_path("pythonpath", p) for p in _str_list("pythonpath", tv.get("pythonpath")))

    b = tv.get("benchmark", {})
    if not isinstance(b, dict):
        _fail("benchmark", b, "must be a table")
    primary = b.get("primary")
    if primary is not None and (not isinstance(primary, str) or not primary):
        _fail("benchmark.primary", primary, "must be a metric name")
    wm = b.get("metrics", {})
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        _fail("benchmark.metrics", wm, "must map weakness kinds to metric names")
    for kind in wm:
        if kind not in {w.value for w in WeaknessType}:
            _fail(f"benchmark.metrics.{kind}", wm[kind], "unknown weakness kind")

    s = tv.get("sandbox", {})
    if not isinstance(s, dict):
        _fail("sandbox", s, "must be a table")
    d = SandboxLimits()
    ints = ("memory_mb", "cpu_secs", "max_processes", "max_file_mb", "max_open_files", "tmp_mb",
            "shm_mb", "max_output_kb", "uid", "gid")
    for k in s:
        if k not in ("timeout_secs", "require_isolation", "env_allow", *ints):
            _fail(f"sandbox.{k}", s[k], "unknown key")
    require = s.get("require_isolation", d.require_isolation)
    if not isinstance(require, bool):
        _fail("sandbox.require_isolation", require, "must be true or false")
    limits = SandboxLimits(
        timeout_secs=_num("sandbox.timeout_secs", s.get("timeout_secs", d.timeout_secs)),
        require_isolation=require,
        env_allow=_str_list("sandbox.env_allow", s.get("env_allow")),
        **{k: int(_num(f"sandbox.{k}", s.get(k, getattr(d, k)), integer=True)) for k in ints},
    )
    if limits.uid == 0 or limits.gid == 0:
        _fail("sandbox.uid" if limits.uid == 0 else "sandbox.gid", 0, "must not be root")

    raw_t = tv.get("tunables", [])
    if not isinstance(raw_t, list):
        _fail("tunables", raw_t, "must be an array of tables ([[tool.vortex.tunables]])")
    tunables = tuple(_tunable(i, t) for i, t in enumerate(raw_t))
    names = [t.name for t in tunables]
    if len(set(names)) != len(names):
        _fail("tunables", names, "names must be unique")

    cp = tv.get("command_proposer")
    command_proposer = None
    if cp is not None:
        if not isinstance(cp, dict):
            _fail("command_proposer", cp, "must be a table")
        kinds = _str_list("command_proposer.weaknesses", cp.get("weaknesses"))
        for kind in kinds:
            if kind not in {w.value for w in WeaknessType}:
                _fail("command_proposer.weaknesses", kind, "unknown weakness kind")
        command_proposer = CommandProposerSettings(
            command=_str_list("command_proposer.command", cp.get("command"), required=True),
            timeout_secs=_num("command_proposer.timeout_secs", cp.get("timeout_secs", 120.0)),
            weaknesses=kinds)
    return VortexSettings(root=root, test_command=test_command, benchmark_command=bench,
                          judge=judge, protected=protected, pythonpath=pythonpath,
                          primary_metric=primary, weakness_metrics=dict(wm), sandbox=limits,
                          tunables=tunables, command_proposer=command_proposer)
