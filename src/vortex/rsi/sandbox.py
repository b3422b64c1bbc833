"""Sandboxed testing of a diff: a private view of the tree, a real patch tool, limited subprocesses.

How a proposal is tested (:meth:`Sandbox.test`):

1. Two trees are made under the sandbox base directory: *baseline* (the original) and
   *candidate*. Where the namespaces below are available, each is an overlay file system whose
   lower layer is the real tree and whose upper layer is a private directory: nothing is copied,
   every write lands in the upper layer, and the real tree cannot change. Elsewhere the trees
   are real copies (``copy_file_range`` in the kernel; never hard links, which a write in the
   sandbox would carry into the original inode).
2. The diff's paths are checked (no absolute paths, ``..``, symlinks or paths resolving outside
   the tree) and it is applied in the candidate with ``git apply`` (run like the commands below).
3. The judge paths (``[tool.vortex] judge``: the tests and the benchmark script) of the
   candidate are reset to the original tree's (upper-layer entries removed, or copies
   replaced), so a patch cannot weaken what grades it.
4. The test command runs in the candidate; if it passes, the benchmark command runs
   ``repeats`` times on baseline and candidate interleaved (B C, C B, B C, ...), and the paired
   differences of the judged metric give a mean and a Student-t confidence interval.

Every command runs in its own session with a wall-clock timeout that kills the whole process
group; with ``RLIMIT_AS``, ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NPROC`` (and no core dumps);
with an environment reduced to an allow list; and, where the OS allows, inside
``unshare --user --map-root-user --net --pid --mount --mount-proc --fork --kill-child``:

* no network (the new network namespace has only a loopback device, and it is down);
* a PID namespace with its own ``/proc``: the command sees no other process (so it cannot read
  another process's environment), and killing the namespace's first process kills every process
  the command started, even ones that left the process group;
* a mount namespace in which ``/`` is remounted read-only and only the sandbox directory stays
  writable, so neither the real tree nor anything else on the root file system can be changed.

The kernel never applies ``RLIMIT_NPROC`` to uid 0, so when Vortex runs as root the waiting
loop watches the system's task count every 2 ms and, when it grew by more than
``max_processes``, counts the command's processes (its PID namespace, or its session without
namespaces) and kills them if they are too many. For other users ``RLIMIT_NPROC`` is set to the user's current process
count plus ``max_processes``. ``TestResult.network_isolated`` says
whether the namespaces could be used.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..errors import PatchError, SandboxError
from .diffs import check_paths, parse_diff
from .settings import SandboxLimits, VortexSettings
from .trees import SKIP_NAMES

__all__ = ["TestResult", "CommandRun", "Sandbox", "t_quantile", "paired_interval",
           "parse_pytest_summary", "run_limited", "isolation_support", "overlay_support"]

log = logging.getLogger(__name__)

_BASE_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


# ----------------------------------------------------------------------------- statistics

def _t_central(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution for an integer ``df`` (no SciPy).

    The CDF has a finite closed form for integer df (A&S 26.7.3-4); the quantile is found by
    bisection on it to ~1e-12. Above df = 1000 the Cornish-Fisher expansion around the normal
    quantile (A&S 26.7.5) is used; its error there is below 1e-9.
    """
    if not 0 < p < 1:
        raise ValueError(f"p={p!r} must be in (0, 1)")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df={df!r} must be an integer >= 1")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    if df > 1000:
        z = statistics.NormalDist().inv_cdf(p)
        g1 = (z ** 3 + z) / 4
        g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
        g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
        return z + g1 / df + g2 / df ** 2 + g3 / df ** 3
    target = 2 * p - 1  # P(|T| < t)
    lo, hi = 0.0, 1.0
    while _t_central(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_central(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def paired_interval(diffs: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided ``confidence`` Student-t interval."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"need at least 2 paired differences, got {n}")
    mean = statistics.fmean(diffs)
    half = t_quantile(0.5 + confidence / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


_SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


def parse_pytest_summary(output: str) -> dict[str, int] | None:
    """Counts from pytest's final summary line (``== 3 passed, 1 failed in 0.12s ==``)."""
    for line in reversed(output.splitlines()):
        if re.search(r"\b(passed|failed|errors?|no tests ran)\b", line) and re.search(r"\bin [\d.]+s", line):
            counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
            for num, word in _SUMMARY.findall(line):
                key = "errors" if word.startswith("error") else word
                if key in counts:
                    counts[key] += int(num)
            return counts
    return None


# ----------------------------------------------------------------------------- processes

@dataclass
class CommandRun:
    """One finished sandboxed command."""

    command: list[str]
    returncode: int | None
    timed_out: bool
    duration_secs: float
    stdout: str
    stderr: str
    process_limit_hit: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        if self.process_limit_hit:
            return f"{' '.join(self.command)}: killed for starting too many processes"
        if self.timed_out:
            return f"{self.command[-1]!r}: killed after the wall-clock timeout ({self.duration_secs:.1f}s)"
        if self.returncode is not None and self.returncode < 0:
            sig = signal.Signals(-self.returncode).name
            return f"{' '.join(self.command)}: killed by {sig}"
        return f"{' '.join(self.command)}: exit status {self.returncode}"


# $0 stays writable, $1 is the working directory, $2..$5 an optional overlay (lower, upper, work,
# mount point; empty $5 = none); then / is remounted read-only and the command is exec'd
_WRAPPER = ('mount --bind "$0" "$0" && if [ -n "$5" ]; then mount -t overlay overlay '
            '-o "lowerdir=$2,upperdir=$3,workdir=$4" "$5"; fi && mount -o remount,bind,ro / '
            '&& cd "$1" && shift 5 && exec "$@"')


@functools.lru_cache(maxsize=1)
def isolation_support() -> bool:
    """Whether ``unshare --user --net --pid --mount`` (and the read-only remount) work here."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    work = tempfile.mkdtemp(prefix="vtx-probe-")
    try:
        r = subprocess.run([exe, "-rnpfm", "--mount-proc", "--kill-child", "--", "/bin/sh", "-c",
                            _WRAPPER, work, work, "", "", "", "", "/bin/sh", "-c", "touch ok"],
                           capture_output=True, timeout=20)
        return r.returncode == 0 and os.path.exists(os.path.join(work, "ok"))
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def overlay_support() -> bool:
    """Whether an overlay file system can be mounted inside the sandbox's namespaces."""
    if not isolation_support():
        return False
    work = tempfile.mkdtemp(prefix="vtx-probe-")
    try:
        lower, upper, wk, merged = (os.path.join(work, n) for n in ("lower", "upper", "wk", "merged"))
        for d in (lower, upper, wk, merged):
            os.mkdir(d)
        with open(os.path.join(lower, "f"), "w") as fh:
            fh.write("lower")
        r = subprocess.run([shutil.which("unshare") or "unshare", "-rnpfm", "--mount-proc",
                            "--kill-child", "--", "/bin/sh", "-c", _WRAPPER, work, merged, lower,
                            upper, wk, merged, "/bin/sh", "-c", "cat f > /dev/null && echo x > f"],
                           capture_output=True, timeout=20)
        with open(os.path.join(lower, "f")) as fh:
            untouched = fh.read() == "lower"
        return r.returncode == 0 and untouched and os.path.exists(os.path.join(upper, "f"))
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _user_process_count() -> int:
    uid, n = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _preexec(limits: SandboxLimits, nproc: int):  # type: ignore[no-untyped-def]
    mem = limits.memory_mb << 20
    fsize = limits.max_file_mb << 20

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_secs, limits.cpu_secs))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return apply


def _pid_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _count_in_ns(ns: str) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit() and _pid_ns(name) == ns:
            n += 1
    return n


def _system_tasks() -> int:
    """Number of tasks (threads) on the system, from ``/proc/loadavg``."""
    with open("/proc/loadavg", "rb") as fh:
        return int(fh.read().split()[3].split(b"/")[1])


def _tail(path: str, limit: int = 65536) -> str:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - limit))
        return fh.read().decode("utf-8", "replace")


def run_limited(command: list[str], *, cwd: str, env: dict[str, str], limits: SandboxLimits,
                out_dir: str, writable: str | None = None, isolate: bool = True,
                overlay: tuple[str, str, str, str] | None = None) -> CommandRun:
    """Run ``command`` under the limits (see the module docstring); never raises for the
    command's own failure, which shows in the returned :class:`CommandRun`.

    ``writable`` is the directory that stays writable inside the mount namespace (default
    ``cwd``); ``out_dir`` receives the output files. ``overlay`` = (lower, upper, work, mount
    point) mounts an overlay file system first (namespaces only); ``cwd`` may lie inside it.
    """
    namespaces = isolate and isolation_support()
    argv = list(command)
    if namespaces:
        argv = [shutil.which("unshare") or "unshare", "-rnpfm", "--mount-proc", "--kill-child",
                "--", "/bin/sh", "-c", _WRAPPER, writable or cwd, cwd, *(overlay or ("",) * 4)] + argv
        popen_cwd = writable or cwd
    elif overlay is not None:
        raise SandboxError("an overlay needs the sandbox namespaces, which this host does not allow")
    else:
        popen_cwd = cwd
    root_user = os.geteuid() == 0
    nproc = limits.max_processes if root_user else _user_process_count() + limits.max_processes
    tag = uuid.uuid4().hex[:8]
    out_path, err_path = os.path.join(out_dir, f"{tag}.out"), os.path.join(out_dir, f"{tag}.err")
    t0 = time.monotonic()
    timed_out = over_limit = False
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(argv, cwd=popen_cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True,
                                    preexec_fn=_preexec(limits, nproc))
        except OSError as exc:
            return CommandRun(list(command), None, False, 0.0, "", f"cannot start: {exc}")
        deadline = t0 + limits.timeout_secs
        own_ns = _pid_ns("self")
        try:
            if root_user:
                # RLIMIT_NPROC does not bind uid 0: watch the system's task count (one small read
                # of /proc/loadavg every 2 ms) and, when it grew by more than the limit, count
                # the command's processes exactly: its PID namespace, or else its session
                ns = None
                base_tasks = _system_tasks()
                while proc.poll() is None:
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
                    if namespaces and ns is None:
                        for k in os.listdir("/proc"):
                            if k.isdigit() and _stat_field(k, 1) == proc.pid:
                                cand = _pid_ns(k)
                                if cand is not None and cand != own_ns:
                                    ns = cand
                    else:
                        tasks = _system_tasks()
                        if tasks - base_tasks > limits.max_processes:
                            inside = _count_in_ns(ns) if ns is not None else _count_in_session(proc.pid)
                            if inside > limits.max_processes:
                                over_limit = True
                                break
                            base_tasks = tasks - inside  # other processes grew, not ours
                    time.sleep(0.002)
            else:
                proc.wait(timeout=limits.timeout_secs)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # the whole process group goes, whether it finished or not (stragglers included);
            # with a PID namespace, the death of its first process takes every member with it
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    run = CommandRun(list(command), proc.returncode, timed_out, time.monotonic() - t0,
                     _tail(out_path), _tail(err_path))
    if over_limit:
        run.stderr += f"\n[vortex sandbox] killed: more than {limits.max_processes} processes"
        run.process_limit_hit = True
    return run


def _stat_field(pid: str, index: int) -> int:
    """Field ``index`` after the command name in ``/proc/<pid>/stat`` (1 = ppid, 3 = session)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return int(data[data.rindex(b")") + 2:].split()[index])
    except (OSError, ValueError, IndexError):
        return -1


def _count_in_session(sid: int) -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit() and _stat_field(name, 3) == sid)


# ----------------------------------------------------------------------------- result

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta_interval"] = list(self.delta_interval) if self.delta_interval else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TestResult":
        d = dict(d)
        if d.get("delta_interval") is not None:
            d["delta_interval"] = tuple(d["delta_interval"])
        return cls(**d)


# ----------------------------------------------------------------------------- sandbox

@dataclass
class _Tree:
    """One sandbox tree: where commands see it, and its overlay layers (None = a plain copy)."""

    path: str
    overlay: tuple[str, str, str, str] | None = None

    @property
    def upper(self) -> str:
        return self.overlay[1] if self.overlay else self.path


class Sandbox:
    """Tests diffs against the tree described by ``settings``.

    Parameters
    ----------
    settings
        The target tree's settings.
    base_dir
        Where sandbox directories are made (default ``$TMPDIR/vortex-sandbox``).
    isolate
        Use namespaces when available (False only for debugging).
    keep
        Keep the sandbox directory after the test (for inspection).
    """

    def __init__(self, settings: VortexSettings, *, base_dir: str | None = None,
                 isolate: bool = True, keep: bool = False) -> None:
        self.settings = settings
        self.base_dir = base_dir or os.path.join(tempfile.gettempdir(), "vortex-sandbox")
        os.makedirs(self.base_dir, mode=0o711, exist_ok=True)
        self.isolate = isolate
        self.keep = keep
        self.network_isolated = isolate and isolation_support()
        # an overlay of the real tree costs nothing to set up; its option syntax forbids , : \
        self.use_overlay = (self.network_isolated and overlay_support()
                            and not any(c in settings.root for c in ",:\\"))
        self._lock = threading.Lock()  # one test at a time: a test owns _work and _logs

    # -- tree handling
    @staticmethod
    def _place(src: str, dst: str) -> None:
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        else:  # contents (copy_file_range in the kernel) and permission bits; no other metadata
            shutil.copyfile(src, dst, follow_symlinks=False)
            shutil.copymode(src, dst)

    def materialize(self, src: str, dst: str) -> int:
        """Copy the tree ``src`` to ``dst`` (symlinks kept as links, caches skipped); returns the
        number of files. Directories are made first, then files are copied by a few threads
        (the copies run in the kernel, outside the GIL)."""
        pairs: list[tuple[str, str]] = []
        os.makedirs(dst, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = [d for d in dirnames if d not in SKIP_NAMES
                           and not os.path.islink(os.path.join(dirpath, d))]
            rel = os.path.relpath(dirpath, src)
            target = dst if rel == "." else os.path.join(dst, rel)
            for d in dirnames:
                os.mkdir(os.path.join(target, d), 0o755)
            links = [d for d in os.listdir(dirpath) if os.path.islink(os.path.join(dirpath, d))
                     and os.path.isdir(os.path.join(dirpath, d))]
            pairs.extend((os.path.join(dirpath, n), os.path.join(target, n))
                         for n in filenames + links if not n.endswith(".pyc"))
        if len(pairs) < 64:
            for a, b in pairs:
                self._place(a, b)
        else:
            with ThreadPoolExecutor(max_workers=4) as pool:
                for _ in pool.map(lambda ab: self._place(*ab), pairs, chunksize=32):
                    pass
        return len(pairs)

    def _make_tree(self, work: str, name: str) -> _Tree:
        path = os.path.join(work, name)
        if not self.use_overlay:
            self.materialize(self.settings.root, path)
            return _Tree(path)
        layers = [os.path.join(work, f"{name}.{n}") for n in ("upper", "ovlwork")]
        for d in (path, *layers):
            os.mkdir(d, 0o755)
        return _Tree(path, (self.settings.root, layers[0], layers[1], path))

    def _restore_judge(self, tree: _Tree) -> None:
        """Make the judge paths of ``tree`` the original tree's again."""
        root = self.settings.root
        for rel in self.settings.judge:
            dst = os.path.join(tree.upper, rel)
            if tree.overlay is not None:
                # drop whatever the diff put in the upper layer (files, whiteouts, opaque
                # directories) at the judge path or at an ancestor that hides it
                parts = rel.split("/")
                for i in range(1, len(parts)):
                    anc = os.path.join(tree.upper, *parts[:i])
                    if os.path.lexists(anc) and not os.path.isdir(anc):
                        os.unlink(anc)
                if os.path.isdir(dst) and not os.path.islink(dst):
                    shutil.rmtree(dst)
                elif os.path.lexists(dst):
                    os.unlink(dst)
                continue
            src = os.path.join(root, rel)
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            elif os.path.lexists(dst):
                os.unlink(dst)
            if os.path.isdir(src):
                self.materialize(src, dst)
            elif os.path.exists(src):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                self._place(src, dst)

    def _env(self, tree: str, home: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in (*_BASE_ENV, *self.settings.sandbox.env_allow) if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        import vortex

        vortex_parent = os.path.dirname(os.path.dirname(os.path.abspath(vortex.__file__)))
        paths = [os.path.join(tree, p) for p in self.settings.pythonpath] + [vortex_parent]
        env.update(HOME=home, TMPDIR=home, PYTHONPATH=os.pathsep.join(paths),
                   PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
        return env

    def _run(self, command: list[str], tree: _Tree, env: dict[str, str],
             limits: SandboxLimits | None = None) -> CommandRun:
        return run_limited(command, cwd=tree.path, env=env, limits=limits or self.settings.sandbox,
                           out_dir=self._logs, writable=self._work, isolate=self.isolate,
                           overlay=tree.overlay)

    def apply_diff(self, diff: str, tree: _Tree) -> list[str]:
        """Check the diff's paths against the original tree and apply it to ``tree`` with
        ``git apply`` (inside the namespaces when the tree is an overlay).

        Raises
        ------
        PatchError
            Unsafe path, malformed diff or a diff that does not apply.
        """
        touched = check_paths(parse_diff(diff), self.settings.root)
        if tree.overlay is None:
            touched = check_paths(parse_diff(diff), tree.path)
        git = shutil.which("git")
        if git is None:
            raise SandboxError("git is not installed; it is needed to apply diffs")
        patch_path = os.path.join(self._work, "proposal.diff")
        with open(patch_path, "w", encoding="utf-8") as fh:
            fh.write(diff if diff.endswith("\n") else diff + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "GIT_CEILING_DIRECTORIES": self._work, "HOME": self._work}
        limits = SandboxLimits(timeout_secs=60, memory_mb=max(1024, self.settings.sandbox.memory_mb),
                               max_file_mb=self.settings.sandbox.max_file_mb)
        run = self._run([git, "apply", "--whitespace=nowarn", "-p1", patch_path], tree, env, limits)
        if not run.ok:
            raise PatchError(f"diff does not apply: {run.stderr.strip() or run.stdout.strip()}")
        return touched

    # -- the test
    def test(self, diff: str, *, metric: str | None = None, repeats: int = 5,
             confidence: float = 0.95) -> TestResult:
        """Test ``diff``; see the module docstring. Patch problems and failing commands are
        reported in the result; only a sandbox that cannot be set up raises SandboxError."""
        with self._lock:
            return self._test(diff, metric, repeats, confidence)

    def _test(self, diff: str, metric: str | None, repeats: int, confidence: float) -> TestResult:
        t0 = time.monotonic()
        s = self.settings
        res = TestResult(passed=False, confidence_level=confidence,
                         network_isolated=self.network_isolated, metric=metric or s.primary_metric)
        if not res.network_isolated:
            res.notes.append("network not isolated: unshare --user --net unavailable on this host")
        work = tempfile.mkdtemp(prefix="sbx-", dir=self.base_dir)
        os.chmod(work, 0o711)
        self._work = work
        self._logs = os.path.join(work, "logs")
        try:
            home = os.path.join(work, "home")
            try:
                os.mkdir(self._logs)
                os.mkdir(home, 0o700)
                cand = self._make_tree(work, "candidate")
            except OSError as exc:
                raise SandboxError(f"cannot build the sandbox tree in {work}: {exc}") from exc
            try:
                self.apply_diff(diff, cand)
            except PatchError as exc:
                res.errors.append(str(exc))
                return res
            self._restore_judge(cand)
            base = None
            if s.benchmark_command and res.metric is not None:
                base = self._make_tree(work, "baseline")
            res.setup_secs = time.monotonic() - t0
            run = self._run(s.expand(s.test_command), cand, self._env(cand.path, home))
            res.command_secs += run.duration_secs
            res.test_output = (run.stdout + run.stderr)[-8000:]
            res.timed_out = run.timed_out
            counts = parse_pytest_summary(run.stdout + "\n" + run.stderr)
            if counts is not None:
                res.tests_passed = counts["passed"]
                res.tests_failed = counts["failed"] + counts["errors"]
                res.tests_run = res.tests_passed + res.tests_failed
            if not run.ok:
                res.errors.append(f"tests failed: {run.describe()}")
                return res
            if s.benchmark_command:
                self._benchmark(res, base, cand, home, repeats, confidence)
                if res.errors:
                    return res
            res.passed = res.improved is not False
            if not res.passed:
                res.errors.append(f"no significant improvement of {res.metric}: delta "
                                  f"{res.performance_delta:+.3%}, {confidence:.0%} interval "
                                  f"[{res.delta_interval[0]:+.3%}, {res.delta_interval[1]:+.3%}]")  # type: ignore[index]
            return res
        finally:
            res.duration_secs = time.monotonic() - t0
            if not self.keep:
                shutil.rmtree(work, ignore_errors=True)

    def _bench_once(self, tree: _Tree, home: str) -> tuple[dict[str, tuple[float, str]], float]:
        s = self.settings
        run = self._run(s.expand(s.benchmark_command), tree, self._env(tree.path, home))
        if not run.ok:
            raise SandboxError(f"benchmark failed: {run.describe()}: {run.stderr[-500:]}")
        for line in reversed(run.stdout.strip().splitlines()):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out = {}
                for name, m in obj.items():
                    if not (isinstance(m, dict) and isinstance(m.get("value"), (int, float))
                            and m.get("better") in ("lower", "higher")):
                        raise SandboxError(f"benchmark metric {name!r}={m!r}: expected "
                                           '{"value": number, "better": "lower"|"higher"}')
                    out[name] = (float(m["value"]), m["better"])
                return out, run.duration_secs
        raise SandboxError("benchmark printed no JSON object")

    def _benchmark(self, res: TestResult, base: _Tree | None, cand: _Tree, home: str,
                   repeats: int, confidence: float) -> None:
        before: list[dict[str, tuple[float, str]]] = []
        after: list[dict[str, tuple[float, str]]] = []
        try:
            for i in range(repeats if base else 1):
                order = [(base, before), (cand, after)] if i % 2 == 0 else [(cand, after), (base, before)]
                for tree, sink in order:
                    if tree is None:
                        continue
                    metrics, secs = self._bench_once(tree, home)
                    sink.append(metrics)
                    res.command_secs += secs
        except SandboxError as exc:
            res.errors.append(str(exc))
            return
        res.benchmark_runs = len(after)
        res.benchmark_after = {k: statistics.fmean(r[k][0] for r in after) for k in after[0]}
        if not before:
            return
        res.benchmark_before = {k: statistics.fmean(r[k][0] for r in before) for k in before[0]}
        metric = res.metric
        if metric not in res.benchmark_before or metric not in res.benchmark_after:
            res.errors.append(f"benchmark does not report the judged metric {metric!r}")
            return
        better = after[0][metric][1]
        sign = -1.0 if better == "lower" else 1.0
        scale = abs(res.benchmark_before[metric]) or 1.0
        diffs = [sign * (a[metric][0] - b[metric][0]) / scale for a, b in zip(after, before)]
        mean, lo, hi = paired_interval(diffs, confidence)
        res.performance_delta, res.delta_interval = mean, (lo, hi)
        res.improved = lo > 0
