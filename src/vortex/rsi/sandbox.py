"""Testing a diff: its trees, its judge runs, its verdict.

How a proposal is tested (:meth:`Sandbox.test`):

1. The diff is read with git (:func:`vortex.rsi.diffs.describe_diff`): paths, kinds, modes;
   refused diffs are rejected. The original tree's digest
   (:func:`vortex.rsi.trees.tree_sha256`) is recorded in ``TestResult.tree_sha256``.
2. The *candidate* tree is a copy of the original (``copy_file_range`` in the kernel, modes
   kept, symlinks kept as links, caches skipped) with the diff applied by ``git apply``; the
   sha256 of every touched file right after that is ``TestResult.candidate_files``. Judge paths
   (``[tool.vortex] judge``: tests, benchmark script) the diff touched are put back to the
   original's, and a diff that changes a ``conftest.py`` is not judged. The *baseline* is the
   real tree itself (a copy when commands run unjailed).
3. Every command runs in its own jail (:mod:`vortex.rsi.jail`) that binds exactly one tree,
   read-only, at ``/vortex/tree``: the two trees cannot see or change each other, and the only
   writable places are the jail's size-capped ``/tmp`` and ``/dev/shm``. The judge's files
   (the original's pytest configuration, Vortex's runner) are bound read-only beside it.
4. The original tests run once on the baseline (the result is cached per tree digest and
   judge configuration), then on the candidate, both under Vortex's runner
   (:mod:`vortex.rsi.judge`): the candidate passes when it ran the same tests as the original
   with no failure, no error and no skip the original did not have.
5. If it passed and a benchmark is configured, the benchmark script runs ``repeats`` times on
   baseline and candidate interleaved (B C, C B, B C, ...); the paired differences of the judged
   metric give a mean and a Student-t confidence interval.
6. After every command the judge files of both trees are checked against the original's
   (sha256); at the end the real tree's digest is checked unchanged.

Verdicts and errors: a candidate that fails (tests, benchmark, a forged or missing result,
tampering) gives ``passed=False``. When the judge itself could not run (git or pytest missing,
the jail could not start, a timeout, the original's own run failing, processes outliving a run,
the real tree changing meanwhile), the result has ``errored=True`` and the cause, in the
runner's own words where there are some: there is no verdict, the proposal is retried later.

Isolation: ``TestResult.isolated`` (and ``Sandbox.isolation``) say whether the commands were
jailed. Without a working bwrap they run unjailed, loudly (a warning in the log, a note in the
result); such results must never be auto-applied; with ``[tool.vortex.sandbox]
require_isolation = true`` they are errored instead.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import vortex

from ..errors import PatchError, SandboxError
from .diffs import FileChange, describe_diff, git_executable, touched_paths
from .jail import Bind, Isolation, Jail, JailRun, probe_isolation
from .judge import (
    RUNNER,
    ChannelReport,
    TestOutcomes,
    compare_outcomes,
    install_pytest_config,
    judge_files_touched,
    paired_interval,
    parse_benchmark,
    pytest_argv,
    read_channel,
    t_quantile,
)
from .settings import VortexSettings
from .trees import SKIP_NAMES, tree_sha256

__all__ = ["Sandbox", "TestResult", "copy_tree", "paired_interval", "t_quantile"]

log = logging.getLogger(__name__)

_TREE, _JUDGE, _LIB = "/vortex/tree", "/vortex/judge", "/vortex/lib"
_PASSWD = ("root:x:0:0:root:/root:/usr/sbin/nologin\n"
           "sandbox:x:1000:1000:Vortex sandbox:/tmp:/usr/sbin/nologin\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
_GROUP = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"
_HOSTS = "127.0.0.1 localhost vortex-sandbox\n::1 localhost\n"
#: Original tests' outcomes by (tree digest, judge configuration): the baseline run is the same
#: for every candidate of one tree state.
_BASELINES: collections.OrderedDict[tuple, TestOutcomes] = collections.OrderedDict()
_BASELINES_LOCK = threading.Lock()


@dataclass
class TestResult:
    """Outcome of testing one diff in the sandbox.

    ``performance_delta`` is the relative change of the judged metric, signed so that positive
    is better (0.25 = 25 % better), with its ``delta_interval`` at ``confidence_level``;
    ``improved`` is True only when the whole interval is above zero (None: nothing judged).

    ``errored`` means there is no verdict: the judge itself could not run (runner or git
    missing, jail setup failed, timeout); ``errors`` then holds the cause in the runner's own
    words, and ``passed`` is False without the candidate being at fault. ``tree_sha256`` is
    :func:`vortex.rsi.trees.tree_sha256` of the original tree the candidate was built from, so
    an approval on a changed tree re-tests first; ``candidate_files`` maps each path the diff
    touched to the sha256 of its bytes in the tested candidate (None: deleted), so the real
    apply can check that it writes exactly what was tested.

    ``isolated`` is True only when every command ran in the bwrap jail; a result with
    ``isolated=False`` must never be applied automatically. ``isolation`` describes it (or why
    not); ``network_isolated`` is kept for older readers and equals ``isolated``.
    ``baseline_tests`` is the number of tests of the original tree's own run.
    """

    __test__ = False  # not a pytest class

    passed: bool
    tests_run: int = 0
    tests_passed: int = 0
    tests_failed: int = 0
    test_output: str = ""
    metric: str | None = None
    benchmark_before: dict[str, float] = field(default_factory=dict)
    benchmark_after: dict[str, float] = field(default_factory=dict)
    performance_delta: float | None = None
    delta_interval: tuple[float, float] | None = None
    confidence_level: float = 0.95
    benchmark_runs: int = 0
    improved: bool | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration_secs: float = 0.0
    setup_secs: float = 0.0
    command_secs: float = 0.0
    network_isolated: bool = False
    timed_out: bool = False
    errored: bool = False
    tree_sha256: str | None = None
    candidate_files: dict[str, str | None] = field(default_factory=dict)
    isolated: bool = False
    isolation: str = ""
    baseline_tests: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (a proposal's ``test_result``), the interval as a
        list.
        """
        d = asdict(self)
        d["delta_interval"] = list(self.delta_interval) if self.delta_interval else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TestResult:
        """The result :meth:`to_dict` gave ``d``, the interval back as a tuple.

        Raises
        ------
        TypeError
            ``d`` lacks ``passed`` or has a field :class:`TestResult` does not know.
        """
        d = dict(d)
        if d.get("delta_interval") is not None:
            d["delta_interval"] = tuple(d["delta_interval"])
        return cls(**d)


class _Errored(Exception):  # noqa: N818 - control flow inside the sandbox, never raised out
    """The judge could not run: no verdict."""


class _Rejected(Exception):  # noqa: N818 - control flow inside the sandbox, never raised out
    """The candidate failed."""


# ----------------------------------------------------------------------------- trees

def _place(src: str, dst: str) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    else:  # contents (copy_file_range in the kernel) and permission bits; no other metadata
        shutil.copyfile(src, dst, follow_symlinks=False)
        shutil.copymode(src, dst)


def copy_tree(src: str, dst: str) -> int:
    """Copy the tree ``src`` to ``dst`` (symlinks kept as links, caches and ``*.pyc``
    skipped, permission bits kept, never hard links); returns the number of files. Directories
    are made first, then files are copied by a few threads (the copies run in the kernel,
    outside the GIL).
    """
    pairs: list[tuple[str, str]] = []
    os.makedirs(dst, exist_ok=True)
    shutil.copymode(src, dst)
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d not in SKIP_NAMES
                       and not os.path.islink(os.path.join(dirpath, d))]
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else os.path.join(dst, rel)
        for d in dirnames:
            os.mkdir(os.path.join(target, d))
            shutil.copymode(os.path.join(dirpath, d), os.path.join(target, d))
        links = [d for d in os.listdir(dirpath) if os.path.islink(os.path.join(dirpath, d))
                 and os.path.isdir(os.path.join(dirpath, d))]
        pairs.extend((os.path.join(dirpath, n), os.path.join(target, n))
                     for n in filenames + links if not n.endswith(".pyc"))
    if len(pairs) < 64:
        for a, b in pairs:
            _place(a, b)
    else:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in pool.map(lambda ab: _place(*ab), pairs, chunksize=32):
                pass
    return len(pairs)


def _file_sha256(path: str) -> str | None:
    """sha256 of a regular file's bytes, never through a symlink (None: absent)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Rejected(f"{path}: not a regular file after the patch ({exc.strerror})") from None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _judge_digest(root: str, judge: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for rel in judge:
        top = os.path.join(root, rel)
        if os.path.isdir(top) and not os.path.islink(top):
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
                for n in sorted(filenames):
                    if not n.endswith(".pyc"):
                        full = os.path.join(dirpath, n)
                        out[os.path.relpath(full, root)] = (
                            "link:" + os.readlink(full) if os.path.islink(full) else _file_sha256(full))
        else:
            out[rel] = "link:" + os.readlink(top) if os.path.islink(top) else _file_sha256(top)
    return out


# ----------------------------------------------------------------------------- sandbox

class Sandbox:
    """Tests diffs against the tree described by ``settings``.

    Parameters
    ----------
    settings
        The target tree's settings.
    base_dir
        Where sandbox directories are made (default ``$TMPDIR/vortex-sandbox``).
    isolate
        Jail the commands when bwrap works here (False: never; for debugging only).
    keep
        Keep the sandbox directory after the test (for inspection).
    python
        The interpreter of the judge's runs (default: the one running Vortex, ``{python}``).
    """

    def __init__(self, settings: VortexSettings, *, base_dir: str | None = None,
                 isolate: bool = True, keep: bool = False, python: str | None = None) -> None:
        self.settings = settings
        self.base_dir = base_dir or os.path.join(tempfile.gettempdir(), "vortex-sandbox")
        os.makedirs(self.base_dir, mode=0o711, exist_ok=True)
        self.keep = keep
        self.isolation: Isolation = (probe_isolation(settings.sandbox) if isolate else
                                     Isolation(False, None, os.getuid(), "isolation turned off "
                                               "(Sandbox(isolate=False))"))
        self.jail = Jail(settings.sandbox, self.isolation, python)
        self._vortex_dir = os.path.dirname(os.path.abspath(vortex.__file__))
        self._lock = threading.Lock()  # one test at a time: a test owns its work directory

    @property
    def isolated(self) -> bool:
        """Whether commands run jailed (see :class:`vortex.rsi.jail.Isolation`)."""
        return self.isolation.isolated

    @property
    def network_isolated(self) -> bool:
        """Same as :attr:`isolated` (the jail always has its own network namespace)."""
        return self.isolation.isolated

    # -- the test
    def test(self, diff: str, *, metric: str | None = None, repeats: int = 5,
             confidence: float = 0.95, allow: Collection[str] = ()) -> TestResult:
        """Test ``diff`` (see the module docstring); ``allow`` is what its proposer declared
        (renames, copies, modes, binary: :func:`vortex.rsi.diffs.describe_diff`). Never raises
        for a failing candidate or a judge that could not run: both are in the result.
        """
        with self._lock:
            t0 = time.monotonic()
            iso = self.isolation
            res = TestResult(passed=False, confidence_level=confidence, isolated=iso.isolated,
                             network_isolated=iso.isolated, isolation=iso.describe(),
                             metric=metric or self.settings.primary_metric)
            try:
                if not iso.isolated:
                    res.notes.append(f"NOT ISOLATED ({iso.cause}): commands ran unjailed; this "
                                     "result must not be applied automatically")
                    if self.settings.sandbox.require_isolation:
                        raise _Errored("isolation is required ([tool.vortex.sandbox] "
                                       f"require_isolation) but unavailable: {iso.cause}")
                self._test(res, diff, repeats, confidence, allow, t0)
            except _Errored as exc:
                res.passed, res.errored = False, True
                res.errors.append(str(exc))
            except _Rejected as exc:
                res.passed = False
                res.errors.append(str(exc))
            except (OSError, SandboxError) as exc:  # the sandbox's own files: disk full, ...
                res.passed, res.errored = False, True
                res.errors.append(f"sandbox error: {exc}")
            res.duration_secs = time.monotonic() - t0
            return res

    def _test(self, res: TestResult, diff: str, repeats: int, confidence: float,
              allow: Collection[str], t0: float) -> None:
        s = self.settings
        res.tree_sha256 = tree_sha256(s.root)
        try:
            changes = describe_diff(diff, s.root, allow=allow)
        except PatchError as exc:
            raise _Rejected(str(exc)) from None
        except SandboxError as exc:
            raise _Errored(str(exc)) from None
        touched = touched_paths(changes)
        config = judge_files_touched([p for p in touched if not s.in_judge(p)])
        if config:
            raise _Rejected(f"the diff changes {', '.join(config)}, which configures the test run; "
                            "the judge never runs a candidate's test configuration")
        work = tempfile.mkdtemp(prefix="sbx-", dir=self.base_dir)
        try:
            self._run_test(res, work, diff, changes, repeats, confidence, t0)
        finally:
            if not self.keep:
                shutil.rmtree(work, ignore_errors=True)
            if tree_sha256(s.root) != res.tree_sha256:
                raise _Errored(f"the real tree {s.root} changed during the test; the result "
                               "describes no tree state")

    def _run_test(self, res: TestResult, work: str, diff: str, changes: list[FileChange],
                  repeats: int, confidence: float, t0: float) -> None:
        s = self.settings
        trial = _Trial(work)
        for name, text in (("passwd", _PASSWD), ("group", _GROUP), ("hosts", _HOSTS)):
            with open(os.path.join(trial.judge_dir, name), "w", encoding="utf-8") as fh:
                fh.write(text)
        trial.ini = install_pytest_config(s.root, s.pytest_args, trial.judge_dir)
        cand = trial.trees["candidate"] = os.path.join(work, "candidate")
        copy_tree(s.root, cand)
        self._apply(diff, cand, work)
        touched = touched_paths(changes)
        res.candidate_files = {p: _file_sha256(os.path.join(cand, p)) for p in touched}
        self._restore_judge(cand, [p for p in touched if s.in_judge(p)])
        trial.expected = _judge_digest(s.root, s.judge)
        self._verify_judge(trial, when="after the patch")

        key = (res.tree_sha256, tuple(s.pytest_args), _file_sha256(os.path.join(trial.judge_dir, trial.ini)),
               self.jail.python, self.isolation.isolated, s.pythonpath, s.sandbox,
               tuple(os.environ.get(k) for k in s.sandbox.env_allow))
        with _BASELINES_LOCK:
            original = _BASELINES.get(key)
        if original is None or (s.benchmark_command and res.metric is not None):
            if self.isolation.isolated:
                # the original code runs on the real tree itself, bound read-only into a jail of
                # its own (the candidate's jail never sees it); the final digest check proves it
                # unchanged. Unjailed, a command could write there: it gets a copy.
                trial.trees["baseline"] = s.root
            else:
                trial.trees["baseline"] = os.path.join(work, "baseline")
                copy_tree(s.root, trial.trees["baseline"])
        res.setup_secs = time.monotonic() - t0
        if original is None:
            original = self._baseline_tests(res, trial)
            with _BASELINES_LOCK:
                _BASELINES[key] = original
                while len(_BASELINES) > 32:
                    _BASELINES.popitem(last=False)
        res.baseline_tests = len(original.outcomes)

        run, report = self._runner(trial, "candidate")
        res.command_secs += run.duration_secs
        res.test_output = (run.stdout + run.stderr)[-8000:]
        res.timed_out = run.timed_out
        self._verify_judge(trial, when="after the candidate's tests")
        rec = self._check_run(run, report, "the candidate's tests")
        try:
            got = TestOutcomes.from_record(rec)
        except (ValueError, TypeError) as exc:
            raise _Rejected(f"the candidate's test result is malformed: {exc}") from None
        res.tests_run = len(got.outcomes)
        res.tests_passed = got.count("passed")
        res.tests_failed = got.count("failed", "error")
        problems = compare_outcomes(original, got, s.in_judge)
        if rec.get("tampered"):
            problems.append("the code under test replaced parts of the judge: "
                            + ", ".join(rec["tampered"][:8]))
        if problems:
            raise _Rejected("tests failed: " + "; ".join(problems))
        if s.benchmark_command:
            self._benchmark(res, trial, repeats, confidence)
        res.passed = res.improved is not False
        if not res.passed:
            res.errors.append(f"no significant improvement of {res.metric}: delta "
                              f"{res.performance_delta:+.3%}, {confidence:.0%} interval "
                              f"[{res.delta_interval[0]:+.3%}, {res.delta_interval[1]:+.3%}]")  # type: ignore[index]

    # -- trees
    def _apply(self, diff: str, tree: str, work: str) -> None:
        """``git apply`` in the candidate copy (git refuses to write through symlinks)."""
        try:
            git = git_executable()
        except SandboxError as exc:
            raise _Errored(str(exc)) from None
        patch = os.path.join(work, "proposal.diff")
        with open(patch, "w", encoding="utf-8", newline="") as fh:
            fh.write(diff if diff.endswith("\n") else diff + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "LC_ALL": "C",
               "GIT_CEILING_DIRECTORIES": work, "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull}
        try:
            r = subprocess.run([git, "apply", "--whitespace=nowarn", "-p1", patch], cwd=tree,
                               check=False, env=env, capture_output=True, text=True, timeout=60, umask=0o022)
        except subprocess.TimeoutExpired:
            raise _Errored("git apply timed out") from None
        if r.returncode != 0:
            raise _Rejected(f"diff does not apply: {(r.stderr or r.stdout).strip()}")

    def _restore_judge(self, tree: str, touched: list[str]) -> None:
        """Put the judge paths the diff touched back to the original's."""
        for rel in touched:
            dst, src = os.path.join(tree, rel), os.path.join(self.settings.root, rel)
            if os.path.lexists(dst):
                os.unlink(dst)
            if os.path.lexists(src):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                _place(src, dst)

    def _verify_judge(self, trial: _Trial, when: str) -> None:
        expected = trial.expected
        for name, tree in trial.trees.items():
            got = _judge_digest(tree, self.settings.judge)
            if got != expected:
                bad = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
                raise _Errored(f"the judge files of the {name} tree differ from the original's "
                               f"{when}: {', '.join(bad[:5])}")

    # -- runs
    def _runner(self, trial: _Trial, tree: str, script: tuple[str, list[str]] | None = None
                ) -> tuple[JailRun, ChannelReport]:
        """Run Vortex's judge runner on one tree of ``trial`` in a jail of its own: the tests,
        or ``script`` (path in the tree, arguments).
        """
        jail = self.jail
        lib = Bind(self._vortex_dir, f"{_LIB}/vortex")
        tree_b, judge_b = Bind(trial.trees[tree], _TREE), Bind(trial.judge_dir, _JUDGE)
        binds = [tree_b, judge_b, lib] + [Bind(os.path.join(trial.judge_dir, n), f"/etc/{n}")
                                          for n in ("passwd", "group", "hosts")]
        tree_in = jail.inside(tree_b)
        nonce = secrets.token_hex(16)
        order: dict[str, Any] = {
            "nonce": nonce, "root": tree_in, "lib": os.path.dirname(jail.inside(lib)),
            "paths": [os.path.normpath(os.path.join(tree_in, p)) for p in self.settings.pythonpath]}
        if script is None:
            order.update(mode="pytest", args=pytest_argv(
                self.settings, config=os.path.join(jail.inside(judge_b), trial.ini), tree=tree_in))
        else:
            order.update(mode="script", script=os.path.join(tree_in, script[0]), args=script[1])
        runner = os.path.join(jail.inside(lib), os.path.relpath(RUNNER, self._vortex_dir))
        env = {k: os.environ[k] for k in self.settings.sandbox.env_allow if k in os.environ}
        if not self.isolation.isolated:
            home = os.path.join(trial.work, "home")
            os.makedirs(home, mode=0o700, exist_ok=True)
            env.update(HOME=home, TMPDIR=home)
        run = jail.run([jail.python, "-I", "-B", runner], binds=binds, cwd=tree_b, env=env,
                       stdin=json.dumps(order).encode(), channel=True)
        return run, read_channel(run.channel, nonce)

    def _check_run(self, run: JailRun, report: ChannelReport, what: str) -> dict[str, Any]:
        """The run's result record, or the reason there is none (errored or rejected)."""
        tail = (run.stderr.strip() or run.stdout.strip())[-1500:]
        if run.setup_error is not None:
            raise _Errored(f"jail setup failed for {what}: {run.setup_error}")
        if run.survivors:
            raise _Errored(f"processes {run.survivors} of {what} outlived it (they were killed)")
        if report.error is not None:
            raise _Errored(f"the judge could not run {what}: {report.error}")
        if run.timed_out:
            raise _Errored(f"{what}: {run.describe()}")
        if not report.ready:
            raise _Errored(f"the judge did not start for {what} ({run.describe()}): {tail}")
        if report.problems:
            raise _Rejected(f"{what}: the result channel was written by someone else than the "
                            f"judge: {'; '.join(report.problems[:3])}")
        if report.result is None:
            raise _Rejected(f"{what} ended without the judge's result ({run.describe()}); the "
                            f"code under test ended or broke the run: {tail[-500:]}")
        return report.result

    def _baseline_tests(self, res: TestResult, trial: _Trial) -> TestOutcomes:
        run, report = self._runner(trial, "baseline")
        res.command_secs += run.duration_secs
        self._verify_judge(trial, when="after the original's tests")
        try:
            rec = self._check_run(run, report, "the original tree's tests")
            original = TestOutcomes.from_record(rec)
        except (_Rejected, ValueError, TypeError) as exc:
            raise _Errored(str(exc)) from None
        if original.collect_errors:
            raise _Errored(f"the original tree's tests do not collect: {original.collect_errors[:5]}")
        if not original.outcomes:
            raise _Errored("the original tree's test command runs no test; the judge needs tests")
        outside = sorted(f for f in original.test_files() if not self.settings.in_judge(f))
        if outside:
            raise _Errored(f"test files outside the judge paths {list(self.settings.judge)}: "
                           f"{', '.join(outside[:5])}; a candidate could rewrite them (list them "
                           "in [tool.vortex] judge)")
        return original

    def _bench_once(self, trial: _Trial, tree: str) -> tuple[dict[str, tuple[float, str]], float]:
        run, report = self._runner(trial, tree, self.settings.benchmark_script)
        self._verify_judge(trial, when="after a benchmark run")
        baseline = tree == "baseline"
        what = f"the {'original' if baseline else 'candidate'}'s benchmark"
        try:
            rec = self._check_run(run, report, what)
            if rec.get("tampered"):
                raise _Rejected(f"{what}: the code under test replaced parts of the judge: "
                                + ", ".join(rec["tampered"][:8]))
            return parse_benchmark(rec), run.duration_secs
        except ValueError as exc:
            err = f"{what}: {exc}: {run.stderr.strip()[-500:]}"
            raise (_Errored(err) if baseline else _Rejected(err)) from None
        except _Rejected as exc:
            if baseline:
                raise _Errored(str(exc)) from None
            raise

    def _benchmark(self, res: TestResult, trial: _Trial, repeats: int, confidence: float) -> None:
        before: list[dict[str, tuple[float, str]]] = []
        after: list[dict[str, tuple[float, str]]] = []
        pairs = [("baseline", before), ("candidate", after)]
        if res.metric is None:
            pairs = pairs[1:]
        for i in range(repeats if res.metric is not None else 1):
            for tree, sink in (pairs if i % 2 == 0 else pairs[::-1]):
                metrics, secs = self._bench_once(trial, tree)
                sink.append(metrics)
                res.command_secs += secs
        res.benchmark_runs = len(after)
        res.benchmark_after = {k: statistics.fmean(r[k][0] for r in after) for k in after[0]}
        if not before:
            return
        res.benchmark_before = {k: statistics.fmean(r[k][0] for r in before) for k in before[0]}
        metric = res.metric
        if metric not in res.benchmark_before:
            raise _Errored(f"the benchmark does not report the judged metric {metric!r}")
        if metric not in res.benchmark_after:
            raise _Rejected(f"the candidate's benchmark does not report {metric!r}")
        better = before[0][metric][1]
        sign = -1.0 if better == "lower" else 1.0
        scale = abs(res.benchmark_before[metric]) or 1.0
        diffs = [sign * (a[metric][0] - b[metric][0]) / scale for a, b in zip(after, before, strict=True)]
        mean, lo, hi = paired_interval(diffs, confidence)
        res.performance_delta, res.delta_interval = mean, (lo, hi)
        res.improved = lo > 0


@dataclass
class _Trial:
    """One test's work directory: its trees (by role), the judge's files, the expected judge
    digest.
    """

    work: str
    trees: dict[str, str] = field(default_factory=dict)
    ini: str = "pytest.ini"
    expected: dict[str, str | None] = field(default_factory=dict)
    judge_dir: str = ""

    def __post_init__(self) -> None:
        self.judge_dir = os.path.join(self.work, "judge")
        os.mkdir(self.judge_dir, 0o755)
