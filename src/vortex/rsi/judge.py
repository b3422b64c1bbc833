"""The verdict: how the judge's runs are ordered, read and compared.

The judge (tests and benchmark) comes from the original tree and from Vortex, never from the
candidate:

* pytest runs under Vortex's runner (:mod:`vortex.rsi._judge_runner`) with its configuration
  given explicitly: ``-c`` the original tree's pytest configuration file (found in the original
  tree as pytest would, copied to a Vortex-owned read-only directory; an empty one if the tree
  has none), ``--rootdir`` and ``--confcutdir`` the tree, ``-p no:cacheprovider``,
  ``--import-mode=append`` (unless the test command chooses a mode), so a candidate's
  ``pytest.ini``, ``tox.ini``, ``setup.cfg`` or ``[tool.pytest]`` table is never read. Plugins
  are not auto-loaded: only those the test command or the original's configuration name with
  ``-p`` load (from the interpreter's environment); a diff that adds or changes a
  ``conftest.py`` is not judged (:func:`judge_files_touched`); the tests and the benchmark
  script (the judge paths) are the original's.
* Results come back on a descriptor, as records carrying a per-run nonce
  (:func:`read_channel`), never from printed output, and only the runner writes the final
  record after pytest (or the benchmark script) returned.
* ``passed`` means: the same test ids as the original tree's own run of the same tests, none
  failed or errored, and no test skipped or xfailed that did not do so on the original
  (:func:`compare_outcomes`); not an exit status.
* A benchmark prints exactly one JSON object; the runner takes it from the script's own
  ``sys.stdout`` writes, so exit handlers and direct writes to descriptor 1 do not count
  (:func:`parse_benchmark`).
"""

from __future__ import annotations

import configparser
import json
import math
import os
import shutil
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..stats import student_t_interval as paired_interval
from ..stats import t_quantile
from .settings import VortexSettings

__all__ = [
    "RUNNER",
    "ChannelReport",
    "TestOutcomes",
    "compare_outcomes",
    "find_pytest_config",
    "install_pytest_config",
    "judge_files_touched",
    "paired_interval",
    "parse_benchmark",
    "pytest_argv",
    "read_channel",
    "t_quantile",
]

#: The runner script, run by path (``python -I -B``) inside the jail.
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_judge_runner.py")

_CONFIG_FILES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")
#: Files that change how the judge runs when they change anywhere in the tree.
JUDGE_CONFIG_NAMES = frozenset({"conftest.py"})


# ----------------------------------------------------------------------------- configuration

def _has_pytest_section(path: str) -> bool:
    name = os.path.basename(path)
    try:
        if name == "pyproject.toml":
            with open(path, "rb") as fh:
                tool = tomllib.load(fh).get("tool", {})
            return isinstance(tool, dict) and "pytest" in tool
        if name in ("pytest.ini", ".pytest.ini"):
            return True
        cp = configparser.ConfigParser(interpolation=None)
        cp.read(path, encoding="utf-8")
        return cp.has_section("tool:pytest" if name == "setup.cfg" else "pytest")
    except (OSError, ValueError, configparser.Error, tomllib.TOMLDecodeError):
        return False


def find_pytest_config(root: str, args: Sequence[str]) -> str | None:
    """The pytest configuration file the original tree gives its test run, found as pytest
    does (from the common directory of the test paths up to ``root``, in pytest's order of
    file names), but never above ``root``: the tree is self-contained.
    """
    dirs = [os.path.normpath(os.path.join(root, a.split("::")[0])) for a in args
            if not a.startswith("-") and os.path.exists(os.path.join(root, a.split("::")[0]))]
    start = os.path.commonpath(dirs) if dirs else root
    if not os.path.isdir(start):
        start = os.path.dirname(start)
    d = start
    while True:
        for name in _CONFIG_FILES:
            p = os.path.join(d, name)
            if os.path.isfile(p) and not os.path.islink(p) and _has_pytest_section(p):
                return p
        if d == root or not d.startswith(root):
            return None
        d = os.path.dirname(d)


def install_pytest_config(root: str, args: Sequence[str], dest_dir: str) -> str:
    """Copy the original tree's pytest configuration (or an empty one) into ``dest_dir``,
    keeping its file name (pytest reads it by its name); returns the copy's file name.
    """
    src = find_pytest_config(root, args)
    if src is None:
        with open(os.path.join(dest_dir, "pytest.ini"), "w", encoding="utf-8") as fh:
            fh.write("[pytest]\n")
        return "pytest.ini"
    name = os.path.basename(src)
    shutil.copyfile(src, os.path.join(dest_dir, name))
    return name


def pytest_argv(settings: VortexSettings, *, config: str, tree: str) -> list[str]:
    """Pytest's arguments: the runner's fixed ones, then the test command's."""
    args = settings.pytest_args
    fixed = ["-c", config, "--rootdir", tree, "--confcutdir", tree, "-p", "no:cacheprovider"]
    if not any(a.startswith("--import-mode") for a in args):
        fixed.append("--import-mode=append")  # the tree's directories after the standard library
    return fixed + args


def judge_files_touched(paths: Sequence[str]) -> list[str]:
    """The touched paths that configure the test run (a ``conftest.py`` anywhere)."""
    return [p for p in paths if os.path.basename(p) in JUDGE_CONFIG_NAMES]


# ----------------------------------------------------------------------------- the channel

@dataclass
class ChannelReport:
    """What the runner reported: ``ready`` (it started), ``result`` (the final record),
    ``error`` (the judge could not run, in the runner's words) and ``problems`` (records that
    do not carry the nonce, or too many of them: someone else wrote to the channel).
    """

    ready: bool = False
    result: dict[str, Any] | None = None
    error: str | None = None
    problems: list[str] = field(default_factory=list)


def read_channel(data: bytes, nonce: str) -> ChannelReport:
    """Parse the runner's records; anything not written by the runner is a problem."""
    rep = ChannelReport()
    for n, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rep.problems.append(f"record {n + 1} is not JSON")
            continue
        if not isinstance(rec, dict) or rec.get("nonce") != nonce:
            rep.problems.append(f"record {n + 1} does not carry the run's nonce (forged)")
            continue
        kind = rec.get("kind")
        if kind == "ready" and not rep.ready and rep.result is None:
            rep.ready = True
        elif kind == "error" and rep.error is None and rep.result is None:
            rep.error = str(rec.get("error"))
        elif kind == "result" and rep.ready and rep.result is None:
            rep.result = rec
        else:
            rep.problems.append(f"unexpected {kind!r} record (a second result is forged)")
    return rep


# ----------------------------------------------------------------------------- tests

_OK_ONLY_IF_ORIGINAL = ("skipped", "xfailed", "xpassed")


@dataclass
class TestOutcomes:
    """One test run: outcome by test id (passed, failed, error, skipped, xfailed, xpassed)."""

    __test__ = False  # not a pytest class

    outcomes: dict[str, str]
    collect_errors: list[str] = field(default_factory=list)
    exit: int = 0
    origins: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> TestOutcomes:
        """The run that the judge runner's ``result`` record describes (see
        :func:`read_channel`).

        Raises
        ------
        ValueError, TypeError
            The record is malformed (no ``outcomes`` mapping, an ``exit`` that is no integer,
            ...); the sandbox errors the original's run, and rejects a candidate's, on it.
        """
        outcomes = rec.get("outcomes")
        if not isinstance(outcomes, dict):
            raise ValueError("result record without outcomes")
        origins = rec.get("origins") or {}
        if not isinstance(origins, dict):
            raise ValueError(f"result record whose origins are a {type(origins).__name__}, not a mapping")
        return cls({str(k): str(v) for k, v in outcomes.items()},
                   [str(e) for e in rec.get("collect_errors") or []], int(rec.get("exit", 0)),
                   {str(k): None if v is None else str(v) for k, v in origins.items()})

    def count(self, *kinds: str) -> int:
        """How many tests ended with one of ``kinds`` (``count("failed", "error")``)."""
        return sum(1 for v in self.outcomes.values() if v in kinds)

    def test_files(self) -> set[str]:
        """The files the tests came from (each test id up to its first ``::``): a sandbox run
        whose original tests lie outside the judge paths, where a candidate could rewrite
        them, ends errored.
        """
        return {nid.split("::")[0] for nid in self.outcomes}


def _judge_decided(origin: str | None, in_judge: Callable[[str], bool]) -> bool:
    return origin is None or (not os.path.isabs(origin) and in_judge(origin))


def compare_outcomes(original: TestOutcomes, candidate: TestOutcomes,
                     in_judge: Callable[[str], bool]) -> list[str]:
    """Why the candidate's run does not pass against the original's (empty: it passes).

    A test skipped or xfailed on the candidate only is accepted when the judge decided so: a
    mark of the test, or a ``pytest.skip``/``xfail`` in a file of the judge paths (``in_judge``)
    (a test that skips when the tunables differ from their defaults); raised from anywhere
    else, from the code under test say, it is a problem.
    """
    problems = []
    if candidate.collect_errors:
        problems.append(f"collection errors in {', '.join(candidate.collect_errors[:5])}")
    missing = sorted(set(original.outcomes) - set(candidate.outcomes))
    extra = sorted(set(candidate.outcomes) - set(original.outcomes))
    if missing:
        problems.append(f"{len(missing)} of the original's {len(original.outcomes)} tests did not "
                        f"run: {', '.join(missing[:5])}")
    if extra:
        problems.append(f"{len(extra)} tests that the original does not have: {', '.join(extra[:5])}")
    failed = sorted(k for k, v in candidate.outcomes.items() if v in ("failed", "error"))
    if failed:
        problems.append(f"{len(failed)} failed: {', '.join(failed[:5])}")
    changed = sorted(k for k, v in candidate.outcomes.items()
                     if v in _OK_ONLY_IF_ORIGINAL and original.outcomes.get(k) != v
                     and not _judge_decided(candidate.origins.get(k), in_judge))
    if changed:
        where = candidate.origins.get(changed[0])
        problems.append(f"{len(changed)} {candidate.outcomes[changed[0]]} on the candidate but "
                        f"not on the original, by {where or 'pytest'}: {', '.join(changed[:5])}")
    return problems


# ----------------------------------------------------------------------------- benchmark

def parse_benchmark(rec: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """The metrics of a benchmark run's result record: exactly one JSON object of
    ``{"name": {"value": number, "better": "lower" | "higher"}}``.

    Raises
    ------
    ValueError
        Not exactly one object, or a malformed metric (the message says which).
    """
    objects = rec.get("objects") or []
    if rec.get("exit") not in (0, None):
        raise ValueError(f"the benchmark script exited with status {rec.get('exit')}")
    if len(objects) != 1:
        raise ValueError(f"the benchmark printed {len(objects)} JSON objects; exactly one is required")
    out = {}
    for name, m in objects[0].items():
        value = m.get("value") if isinstance(m, dict) else None
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or m.get("better") not in ("lower", "higher")):
            raise ValueError(f"benchmark metric {name!r}={m!r}: expected "
                             '{"value": finite number, "better": "lower"|"higher"}')
        out[str(name)] = (float(value), m["better"])
    return out
