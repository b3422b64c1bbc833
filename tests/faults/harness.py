"""Fault injection shared by the fault suites: corrupt a file many ways, kill writers for real.

Corruption sweeps
-----------------
:func:`sweep` copies a pristine directory, damages one file in it per case (a flipped byte or a
truncation, see :func:`cases`), and calls a *loader* on the damaged copy **in a child process**,
so a segfault or an abort is a recorded verdict instead of a dead test run. One child runs many
cases in a row (starting Python and importing pyarrow per case would make a dense sweep take
hours); it announces each case before trying it, so when it dies the parent knows which case
killed it, records ``crash`` and starts a new child at the next case.

A loader is ``"module:function"``, importable in the child (test modules under ``tests/`` are,
since the child runs with ``tests/`` and ``tests/faults/`` on ``sys.path``). It takes the
damaged directory and returns a JSON-able summary of everything a user could observe (the
values loaded, not only their count). Each case ends in one verdict:

``harmless``
    the summary equals the pristine one (the damage hit padding, or was repaired exactly);
``detected``
    the loader raised a :class:`vortex.errors.CorruptFileError` whose message names the file;
``recovered``
    the summary differs, and the test's ``acceptable(summary, pristine)`` says that this is a
    documented recovery (a torn log tail set aside, say);
``silent``
    the summary differs and nothing said so: a failure;
``wrong_error``
    any other exception (a ``KeyError``, an ``ArrowInvalid``...): a failure;
``crash``
    the child died (signal or exit) during the case: a failure.

The full sweeps (every byte, every length) run from ``scripts/fault_sweep.py``; the tests run a
dense sample of the same cases.

Kills
-----
:func:`kill_at_random` starts a Python snippet, sends it ``SIGKILL`` at a random moment, and
returns what it printed before dying; the test then checks the state on disk.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
FAILURES = ("silent", "wrong_error", "crash")


@dataclass(frozen=True)
class Case:
    """One way to damage a file: ``flip`` XORs ``mask`` into the byte at ``position``;
    ``truncate`` keeps the first ``position`` bytes."""

    kind: str
    position: int
    mask: int = 0xFF

    def apply(self, data: bytes) -> bytes:
        if self.kind == "truncate":
            return data[:self.position]
        b = bytearray(data)
        b[self.position] ^= self.mask
        return bytes(b)

    def __str__(self) -> str:
        if self.kind == "truncate":
            return f"truncate to {self.position} bytes"
        return f"flip byte {self.position} ^ {self.mask:#04x}"


def cases(size: int, *, sample: int | None = None, seed: int = 0,
          masks: Sequence[int] = (0x01, 0xFF)) -> list[Case]:
    """Flips of every byte (with each mask) and truncations at every shorter length.

    With ``sample``, at most that many positions per kind: evenly spread over the file plus
    the first and last 64 bytes (headers and footers hold the metadata a reader trusts most),
    and a seeded random remainder, so a test run is dense, repeatable and bounded.
    """
    if size <= 0:
        raise ValueError(f"size={size} must be positive")
    positions = list(range(size))
    if sample is not None and size > sample:
        edge = set(range(min(64, size))) | set(range(max(0, size - 64), size))
        spread = {round(i * (size - 1) / max(1, sample // 2 - 1)) for i in range(sample // 2)}
        chosen = edge | spread
        rest = [p for p in positions if p not in chosen]
        rng = random.Random(seed)
        chosen |= set(rng.sample(rest, max(0, min(len(rest), sample - len(chosen)))))
        positions = sorted(chosen)
    out = [Case("flip", p, m) for p in positions for m in masks]
    out += [Case("truncate", p) for p in positions]  # lengths 0 .. size-1
    return out


@dataclass
class Outcome:
    """The verdict of one case (see the module docstring)."""

    case: Case
    verdict: str
    detail: str = ""


@dataclass
class Report:
    """Every outcome of a sweep over one file."""

    file: str
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(o.verdict for o in self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.verdict in FAILURES]

    def summary(self) -> str:
        c = self.counts()
        return f"{self.file}: {len(self.outcomes)} cases, " + ", ".join(
            f"{k} {c[k]}" for k in sorted(c))

    def assert_held(self, limit: int = 10) -> None:
        """Fail with the first ``limit`` failing cases, if any."""
        bad = self.failures()
        if bad:
            lines = [f"  {o.case}: {o.verdict}: {o.detail[:300]}" for o in bad[:limit]]
            raise AssertionError(f"{self.summary()}\n" + "\n".join(lines))


_CHILD = r"""
import importlib, json, os, shutil, sys, traceback
pristine, rel, loader, start, work = sys.argv[1:6]
cases = json.load(open(os.path.join(work, "cases.json")))
mod, fn = loader.split(":")
load = getattr(importlib.import_module(mod), fn)
with open(os.path.join(pristine, rel), "rb") as fh:
    original = fh.read()
def say(obj):
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()
for i in range(int(start), len(cases)):
    kind, pos, mask = cases[i]
    target = os.path.join(work, "case")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(pristine, target, symlinks=True)
    if kind == "truncate":
        data = original[:pos]
    elif kind == "pristine":
        data = original
    else:
        b = bytearray(original); b[pos] ^= mask; data = bytes(b)
    with open(os.path.join(target, rel), "wb") as fh:
        fh.write(data)
    say({"i": i, "start": True})
    try:
        result = load(target)
        say({"i": i, "ok": json.loads(json.dumps(result, default=str))})
    except BaseException as exc:
        say({"i": i, "error": type(exc).__name__,
             "mro": [c.__name__ for c in type(exc).__mro__], "message": str(exc)})
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([HERE, TESTS, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def sweep(pristine_dir: str | os.PathLike[str], rel_path: str, loader: str,
          case_list: Iterable[Case], *,
          acceptable: Callable[[Any, Any], bool] | None = None,
          timeout: float = 600.0) -> Report:
    """Run every case of ``case_list`` against ``rel_path`` inside ``pristine_dir``.

    ``loader`` is ``"module:function"`` (see the module docstring). The pristine directory
    is never modified. ``acceptable(summary, pristine_summary)`` marks a changed summary as a
    documented recovery; without it every change is ``silent``.
    """
    pristine_dir = os.fspath(pristine_dir)
    objs: list[Any] = [None, *case_list]
    todo = [("pristine", 0, 0)] + [(c.kind, c.position, c.mask) for c in objs[1:]]
    report = Report(os.path.basename(rel_path))
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vtx-faults-") as work:
        with open(os.path.join(work, "cases.json"), "w") as fh:
            json.dump(todo, fh)
        start = 0
        deadline = time.monotonic() + timeout
        while start < len(todo):
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, pristine_dir, rel_path, loader, str(start), work],
                capture_output=True, text=True, env=_child_env(),
                timeout=max(1.0, deadline - time.monotonic()))
            current = None
            for line in proc.stdout.splitlines():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("start"):
                    current = msg["i"]
                else:
                    results[msg["i"]] = msg
                    current = None
            if current is None:  # the child finished every case
                break
            why = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                   else f"exit status {proc.returncode}")
            results[current] = {"crash": f"{why}: {proc.stderr[-500:]}"}
            if current == 0:
                raise AssertionError(f"the loader crashed on the pristine copy: {why}\n{proc.stderr}")
            start = current + 1
    base = results.get(0, {})
    if "ok" not in base:
        raise AssertionError(f"the loader failed on the pristine copy of {rel_path}: {base}")
    name = os.path.basename(rel_path)
    for i in range(1, len(todo)):
        r, case = results.get(i, {"crash": "no result"}), objs[i]
        if "crash" in r:
            report.outcomes.append(Outcome(case, "crash", r["crash"]))
        elif "error" in r:
            named = name in r["message"]
            if "CorruptFileError" in r["mro"] and named:
                report.outcomes.append(Outcome(case, "detected", r["message"]))
            else:
                report.outcomes.append(Outcome(case, "wrong_error", f"{r['error']}: {r['message']}"))
        elif r["ok"] == base["ok"]:
            report.outcomes.append(Outcome(case, "harmless"))
        elif acceptable is not None and acceptable(r["ok"], base["ok"]):
            report.outcomes.append(Outcome(case, "recovered", json.dumps(r["ok"])[:300]))
        else:
            report.outcomes.append(Outcome(case, "silent", json.dumps(r["ok"])[:300]))
    return report


def sweep_kind(work_dir: str | os.PathLike[str], make: Callable[[str], None], rel_path: str, loader: str, *,
               sample: int | None, seed: int, acceptable: Callable[[Any, Any], bool] | None = None) -> Report:
    """:func:`sweep` over a sample of :func:`cases` of one file kind: ``make`` writes the
    pristine directory (created in ``work_dir``) holding ``rel_path``. The report's summary is
    printed (pytest shows it with ``-s``).
    """
    pristine = os.path.join(os.fspath(work_dir), "pristine")
    os.mkdir(pristine)
    make(pristine)
    size = os.path.getsize(os.path.join(pristine, rel_path))
    report = sweep(pristine, rel_path, loader, cases(size, sample=sample, seed=seed), acceptable=acceptable)
    print(report.summary())
    return report


def kill_at_random(code: str, *, delay: tuple[float, float], seed: int | None = None,
                   ready: str | None = None, cwd: str | None = None,
                   timeout: float = 60.0) -> tuple[int, str]:
    """Run ``python -c code``, SIGKILL it after a random delay in ``delay`` seconds, and return
    (its exit status, what it printed). With ``ready``, the delay starts once the child printed
    a line equal to it (so start-up time does not eat the window). A child that finished before
    the kill returns its own status (>= 0); a killed one returns -9.
    """
    rng = random.Random(seed)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=_child_env(), cwd=cwd)
    assert proc.stdout is not None
    # Read the raw descriptor, never through the pipe's file object: communicate() below reads
    # the descriptor too, so what a buffered reader had read ahead past the ready line would be lost.
    head = b""
    if ready is not None:
        fd, want, t_end = proc.stdout.fileno(), ready.encode(), time.monotonic() + timeout
        while want not in (line.strip() for line in head.split(b"\n")[:-1]) and time.monotonic() < t_end:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            head += chunk
    time.sleep(rng.uniform(*delay))
    try:
        proc.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, (head + (out or b"")).decode(errors="replace")


def copy_dir(src: str, dst: str) -> str:
    """A pristine copy of ``src`` at ``dst`` (symlinks kept), returned for chaining."""
    shutil.copytree(src, dst, symlinks=True)
    return dst
