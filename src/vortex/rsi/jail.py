"""Process isolation for the sandbox: every command of a sandbox test runs in a bubblewrap jail.

The jail is built by `bubblewrap <https://github.com/containers/bubblewrap>`_ (``bwrap``, the
sandbox Flatpak uses), not by namespace code of our own. What a command sees and can do:

* **An unprivileged user.** bwrap runs unprivileged and puts the command in a new user
  namespace as uid/gid 1000 ("sandbox"), mapped to one unprivileged host uid: the uid Vortex runs
  as, or, when Vortex runs as root, ``[tool.vortex.sandbox] uid``/``gid`` (default 65534,
  "nobody"). Host root is never mapped, so root-owned files are "other" to the command
  (``/etc/shadow`` and a 0600 key are unreadable even when visible), files it creates are owned
  by that uid on the host, and ``RLIMIT_NPROC`` binds (the kernel ignores it for uid 0).
  ``--disable-userns`` forbids nested user namespaces (no way back to capabilities), every
  capability is dropped, ``no_new_privs`` is set and every bind is ``nosuid``.
* **Every namespace**: user, mount, PID, network (only a private loopback), IPC (SysV segments
  die with the run), UTS (hostname ``vortex-sandbox``) and cgroup.
* **A minimal file system.** An empty root, read-only, with: ``/usr`` and the ``/bin``, ``/lib*``
  links; ``/etc/ld.so.cache`` and ``/etc/alternatives``; Vortex's own ``/etc/passwd``,
  ``/etc/group`` and ``/etc/hosts``; the interpreter's prefixes (``sys.prefix``,
  ``sys.base_prefix``: the interpreter and its site-packages); and the binds the caller asks for
  (one tree, the Vortex package, the judge's files), read-only unless asked otherwise. Not
  bound: ``/root``, ``/home``, other repositories, ``/sys`` (the sandbox binds the real tree
  only into the jails of the original's own runs, read-only, never into a candidate's).
  A fresh ``/proc`` for the PID namespace (bwrap keeps ``/proc/sys`` and the other
  kernel knobs read-only), a minimal ``/dev`` (read-only after setup), and the only writable
  places: ``/tmp`` and ``/dev/shm``, private tmpfs mounts of ``tmp_mb``/``shm_mb`` bytes. That
  is the byte quota of the writable area: the kernel refuses the write that would exceed it
  (``ENOSPC``); nothing a command writes reaches the host's disk.
* **A scrubbed environment** (``--clearenv`` then an explicit list), a new session (no
  controlling terminal: no ``TIOCSTI`` into ours), stdin from ``/dev/null`` or a pipe.
* **Limits** (rlimits set before bwrap starts, inherited by everything in the jail): address
  space and CPU seconds per process, processes and threads (``max_processes`` more than its host
  uid has when the command starts: the kernel counts per uid), file size, open descriptors, no
  core dumps; the captured output is kept to ``max_output_kb`` (its head and tail); a
  wall-clock timeout.
* **Nothing outlives a run.** bwrap's first process is PID 1 of the jail's PID namespace; when
  the command ends or times out, Vortex sends SIGKILL to it through a pidfd (no PID reuse
  race), the kernel kills every process of the namespace with it (daemons that left the
  session, cleared their parent-death signal or ignore SIGTERM included), and Vortex then scans
  ``/proc`` for any process still in that namespace; a survivor is killed and reported
  (:attr:`JailRun.survivors`), which the sandbox turns into an error.

When Vortex runs as root, the bind sources may lie where the unprivileged uid cannot reach
them (a pyenv interpreter under ``/root``, a test's temporary directory): the launcher then
enters a private mount namespace, bind-mounts each source under a staging directory the uid can
traverse (``/tmp/vortex-jail-<euid>``), drops to the uid and starts bwrap there. The staging
mounts exist only in that namespace; on the host the staging directory's entries stay empty.

What is *not* isolated: the jail shares the host kernel (a kernel exploit escapes any
namespace sandbox), CPU time and memory bandwidth (benchmarks in the jail feel other load), the
memory of the tmpfs mounts is charged to Vortex's cgroup, and no seccomp filter is loaded beyond
what bwrap does.

Without bwrap (not installed, or the kernel forbids unprivileged user namespaces) the
:class:`Isolation` says so with the cause and commands run unjailed: same rlimits, own
session, the processes of the run (found by a per-run marker in their environment, and their
session) killed at the end; no namespaces, no quota, and as root no process limit but a
watchdog. A warning is logged once per process; nothing tested that way may be auto-applied
(see :mod:`vortex.rsi.sandbox`).
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import degraded
from .settings import SandboxLimits

__all__ = [
    "SANDBOX_UID",
    "Bind",
    "Isolation",
    "Jail",
    "JailRun",
    "interpreter_binds",
    "probe_isolation",
]

log = logging.getLogger(__name__)

#: uid/gid of the command inside the jail (mapped to one unprivileged host uid).
SANDBOX_UID = 1000

_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_RO = ("/etc/ld.so.cache", "/etc/alternatives")
_MARKER = "VORTEX_JAIL_RUN"
_PR_SET_PDEATHSIG = 1
_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside the jail at ``inside`` (read-only unless ``writable``)."""

    host: str
    inside: str
    writable: bool = False


@dataclass(frozen=True)
class Isolation:
    """Whether commands can be jailed on this host, with what, and if not, why.

    ``isolated`` is True when bwrap works here (every namespace, an unprivileged uid, the
    quota); ``cause`` says why not otherwise. ``host_uid`` is the host uid jailed commands run
    as (unjailed: the uid of Vortex itself).
    """

    isolated: bool
    tool: str | None
    host_uid: int
    cause: str = ""

    def describe(self) -> str:
        """One line for status output: the tool and host uid when jailed, else why not."""
        if self.isolated:
            return f"jailed with {self.tool} (host uid {self.host_uid})"
        return f"NOT isolated: {self.cause}"

    def to_dict(self) -> dict[str, Any]:
        """The verdict as a JSON-ready dict."""
        return asdict(self)


@dataclass
class JailRun:
    """One finished command. ``channel`` holds what the command wrote to the result descriptor
    (see :meth:`Jail.run`); ``setup_error`` is set when the jail itself could not start;
    ``survivors`` lists processes of the run found alive after it was killed (always empty
    unless containment failed).
    """

    argv: list[str]
    returncode: int | None
    timed_out: bool
    duration_secs: float
    stdout: str
    stderr: str
    channel: bytes = b""
    setup_error: str | None = None
    survivors: list[int] = field(default_factory=list)
    process_limit_hit: bool = False
    output_dropped: int = 0

    @property
    def ok(self) -> bool:
        """Whether the jail started the command and it exited 0 within its timeout."""
        return self.returncode == 0 and not self.timed_out and self.setup_error is None

    def describe(self) -> str:
        """How the run ended, in one line naming the command (its basename): the jail could
        not start it, it was killed (too many processes, the timeout, a signal) or its exit
        status. The sandbox puts it in an errored or rejected test's reason.
        """
        name = os.path.basename(self.argv[0]) if self.argv else "command"
        if self.setup_error is not None:
            return f"the jail could not start {name}: {self.setup_error}"
        if self.process_limit_hit:
            return f"{name}: killed for starting too many processes"
        if self.timed_out:
            return f"{name}: killed after the wall-clock timeout ({self.duration_secs:.1f}s)"
        if self.returncode is not None and self.returncode < 0:
            return f"{name}: killed by {_signal_name(-self.returncode)}"
        return f"{name}: exit status {self.returncode}"


def _signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``signal 40`` for a number the signal module has no name for (the
    real-time signals between SIGRTMIN and SIGRTMAX), which a command may die of as well.
    """
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ----------------------------------------------------------------------------- output

class _Capped:
    """Keeps the first quarter and the last three quarters of ``limit`` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1024)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, data: bytes) -> None:
        room = self.limit // 4 - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            excess = len(self.tail) - (self.limit - self.limit // 4)
            if excess > 0:
                del self.tail[:excess]
                self.dropped += excess

    def text(self) -> str:
        gap = f"\n[... {self.dropped} bytes of output dropped ...]\n".encode() if self.dropped else b""
        return bytes(self.head + gap + self.tail).decode("utf-8", "replace")


# ----------------------------------------------------------------------------- /proc helpers

def _pid_ns_of(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _stat_fields(pid: int | str) -> list[bytes]:
    """Fields of ``/proc/<pid>/stat`` after the command name (0 = state, 1 = ppid, 3 = session)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        return data[data.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return []


def _live_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return bool(f) and f[0] not in (b"Z", b"X")  # a zombie is dead, only not yet reaped


def _in_pid_ns(ns: str) -> list[int]:
    return [p for p in _live_pids() if _pid_ns_of(p) == ns and _alive(p)]


def _with_marker(token: bytes) -> list[int]:
    out = []
    for p in _live_pids():
        try:
            with open(f"/proc/{p}/environ", "rb") as fh:
                if token in fh.read():
                    out.append(p)
        except OSError:
            pass
    return [p for p in out if p != os.getpid() and _alive(p)]


def _tasks_of_uid(uid: int) -> int:
    """Processes and threads of ``uid`` on the host: what RLIMIT_NPROC counts."""
    n = 0
    for p in _live_pids():
        try:
            if os.stat(f"/proc/{p}").st_uid == uid:
                n += len(os.listdir(f"/proc/{p}/task"))
        except OSError:
            pass
    return n


def _kill_verified(pid: int, belongs: Callable[[int], bool]) -> None:
    """SIGKILL ``pid`` through a pidfd, after checking (on the pidfd's process) that it still
    belongs to the run: a PID freed and reused meanwhile is never signalled.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if belongs(pid):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)


def _system_tasks() -> int:
    """Number of tasks (threads) on the system, from ``/proc/loadavg``."""
    with open("/proc/loadavg", "rb") as fh:
        return int(fh.read().split()[3].split(b"/")[1])


# ----------------------------------------------------------------------------- interpreter

@functools.lru_cache(maxsize=8)
def _prefixes(python: str) -> tuple[str, ...]:
    """sys.prefix, base_prefix, exec_prefix, base_exec_prefix and the executable of ``python``."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, sys.executable)
    code = ("import sys, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
            "sys.base_exec_prefix, sys.executable]))")
    try:
        r = subprocess.run([python, "-I", "-c", code], check=False, capture_output=True, text=True, timeout=30)
        return tuple(json.loads(r.stdout))
    except (OSError, ValueError, subprocess.SubprocessError):
        return (os.path.dirname(os.path.dirname(os.path.abspath(python))),) * 4 + (python,)


def interpreter_binds(python: str | None = None) -> list[Bind]:
    """Read-only binds that make the interpreter ``python`` (default ``sys.executable``) and its
    environment work in the jail: its prefixes (a venv and the Python it was made from), at
    their own paths; none for a prefix under ``/usr``, which the jail binds anyway. Never their
    parents.
    """
    *prefixes, exe = _prefixes(python or sys.executable)
    paths = {os.path.realpath(p) for p in prefixes}
    exe_dir = os.path.dirname(os.path.realpath(exe))
    if not any(exe_dir == p or exe_dir.startswith(p + "/") for p in paths):
        paths.add(exe_dir)
    # the venv's own path as well when it is reached through a symlink
    paths.update(os.path.abspath(p) for p in (prefixes[0], os.path.dirname(exe)))
    out = []
    for p in sorted(paths):
        if p == "/usr" or p.startswith("/usr/") or not os.path.isdir(p):
            continue
        if any(p.startswith(q + "/") for q in paths if q != p and not q.startswith("/usr")):
            continue  # inside another bound prefix
        out.append(Bind(p, p))
    return out


# ----------------------------------------------------------------------------- the jail

def _bwrap_version(exe: str) -> str:
    try:
        r = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "bwrap"
    except (OSError, subprocess.SubprocessError):
        return "bwrap"


class Jail:
    """Runs commands under the limits, jailed when ``isolation.isolated`` (see the module
    docstring).
    """

    def __init__(self, limits: SandboxLimits, isolation: Isolation,
                 python: str | None = None) -> None:
        self.limits = limits
        self.isolation = isolation
        self.python = python or sys.executable
        self._root = os.geteuid() == 0

    # -- paths
    def inside(self, bind: Bind) -> str:
        """Where ``bind`` is seen by the command (its host path when unjailed)."""
        return bind.inside if self.isolation.isolated else bind.host

    # -- argv
    def _bwrap_argv(self, binds: Sequence[Bind], env: dict[str, str], cwd: str,
                    info_fd: int) -> list[str]:
        lim = self.limits
        a = [shutil.which("bwrap") or "bwrap",
             "--unshare-all", "--unshare-user", "--disable-userns",
             "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "vortex-sandbox",
             "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv"]
        for k, v in env.items():
            a += ["--setenv", k, v]
        a += ["--ro-bind", "/usr", "/usr"]
        for p in _SYSTEM_LINKS:
            if os.path.islink(p):
                a += ["--symlink", os.readlink(p), p]
            elif os.path.isdir(p):
                a += ["--ro-bind", p, p]
        for p in _ETC_RO:
            a += ["--ro-bind-try", p, p]
        # the private mounts first: a bind below /tmp (a venv there) must land on the tmpfs
        a += ["--proc", "/proc", "--dev", "/dev",
              "--size", str(lim.tmp_mb << 20), "--perms", "1777", "--tmpfs", "/tmp",
              "--size", str(lim.shm_mb << 20), "--perms", "1777", "--tmpfs", "/dev/shm"]
        for b in binds:
            a += ["--bind" if b.writable else "--ro-bind", b.host, b.inside]
        a += ["--remount-ro", "/dev", "--remount-ro", "/",
              "--chdir", cwd, "--info-fd", str(info_fd), "--"]
        return a

    def _preexec(self, nproc: int, stage: list[tuple[bytes, bytes]] | None,
                 drop: tuple[int, int] | None) -> Callable[[], None]:
        lim = self.limits
        mem, fsize = lim.memory_mb << 20, lim.max_file_mb << 20
        libc = ctypes.CDLL(None, use_errno=True)

        def fail(what: str) -> None:
            err = ctypes.get_errno()
            os.write(2, f"vortex jail launcher: {what}: {os.strerror(err)}\n".encode())
            raise OSError(err, what)

        def apply() -> None:  # in the child between fork and exec: no imports, no locks
            if stage is not None:
                if libc.unshare(_CLONE_NEWNS) != 0:
                    fail("private mount namespace")
                if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
                    fail("mount propagation")
                for src, dst in stage:
                    if libc.mount(src, dst, None, _MS_BIND | _MS_REC, None) != 0:
                        fail(f"staging {src.decode(errors='replace')}")
            if drop is not None:
                os.setgroups([])
                os.setresgid(drop[1], drop[1], drop[1])
                os.setresuid(drop[0], drop[0], drop[0])
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_secs, lim.cpu_secs))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim.max_open_files, lim.max_open_files))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            # last: a change of credentials clears it. bwrap and its jail die with this thread
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        return apply

    # -- running
    def run(self, argv: Sequence[str], *, binds: Sequence[Bind] = (), cwd: Bind | str,
            env: dict[str, str] | None = None, stdin: bytes = b"", channel: bool = False,
            timeout_secs: float | None = None) -> JailRun:
        """Run ``argv`` (paths as seen inside, see :meth:`inside`) and wait for it.

        ``cwd`` is a bind (its inside path) or an inside path; ``env`` the complete
        environment (plus PATH/HOME/TMPDIR defaults); ``stdin`` is written to the command's
        standard input, then closed. With ``channel``, a pipe is opened for the command and its
        descriptor number put in the environment as ``VORTEX_RESULT_FD``; what the command
        writes there comes back in :attr:`JailRun.channel`, apart from its printed output.
        Never raises for the command's own failure; a jail that could not start shows in
        :attr:`JailRun.setup_error`.
        """
        lim = self.limits
        timeout = lim.timeout_secs if timeout_secs is None else timeout_secs
        jailed = self.isolation.isolated
        cwd_inside = self.inside(cwd) if isinstance(cwd, Bind) else cwd
        token = uuid.uuid4().hex
        full_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if jailed:
            full_env.update(HOME="/tmp", TMPDIR="/tmp", USER="sandbox", LOGNAME="sandbox")
        full_env.update(env or {})
        if not jailed:
            full_env[_MARKER] = token  # finds the run's processes, even outside its session
        pipes: list[int] = []

        def pipe() -> tuple[int, int]:
            r, w = os.pipe()
            pipes.extend((r, w))
            return r, w

        out_r, out_w = pipe()
        err_r, err_w = pipe()
        in_r, in_w = pipe()
        pass_fds: list[int] = []
        res_r = -1
        if channel:
            res_r, res_w = pipe()
            pass_fds.append(res_w)
            full_env["VORTEX_RESULT_FD"] = str(res_w)
        info_r = -1
        t0 = time.monotonic()
        try:
            if jailed:
                info_r, info_w = pipe()
                pass_fds.append(info_w)
                stage, drop, shown = self._plan_binds(binds)
                cmd = self._bwrap_argv(shown, full_env, cwd_inside, info_w) + list(argv)
                # RLIMIT_NPROC counts every task of the host uid: those it has already, then
                # bwrap's two processes, the command and what the command may start
                nproc = _tasks_of_uid(drop[0] if drop else os.getuid()) + 3 + lim.max_processes
                popen_env = {"PATH": full_env["PATH"]}  # bwrap's own environment: visible as /proc/1/environ
                popen_cwd = "/"
            else:
                stage, drop = None, None
                cmd = list(argv)
                nproc = lim.max_processes + (0 if self._root else _tasks_of_uid(os.getuid()))
                popen_env, popen_cwd = full_env, cwd_inside
            try:
                proc = subprocess.Popen(cmd, cwd=popen_cwd, env=popen_env, stdin=in_r, stdout=out_w,
                                        stderr=err_w, pass_fds=pass_fds, start_new_session=True,
                                        preexec_fn=self._preexec(nproc, stage, drop))  # noqa: PLW1509 - the child runs prebound libc calls only: no imports, no locks
            except (OSError, subprocess.SubprocessError) as exc:
                os.close(err_w)
                pipes.remove(err_w)
                detail = _drain(err_r).strip() or str(exc)
                return JailRun(list(argv), None, False, 0.0, "", "", setup_error=detail)
            for fd in (out_w, err_w, in_r, *pass_fds):
                os.close(fd)
                pipes.remove(fd)
            ns = None
            pidfd = None
            if jailed:
                info = _drain_bytes(info_r, 30.0)
                try:
                    meta = json.loads(info)
                    ns = f"pid:[{meta['pid-namespace']}]"
                    pidfd = os.pidfd_open(int(meta["child-pid"]))
                    if _pid_ns_of(meta["child-pid"]) != ns:  # exited already, PID reused
                        os.close(pidfd)
                        pidfd = None
                except (ValueError, KeyError, TypeError, OSError):
                    pass
            run = self._wait(proc, argv, t0, timeout, out_r, err_r, (in_w, pipes), stdin, res_r, ns,
                             pidfd, token, jailed)
            if jailed and ns is None and run.setup_error is None:
                run.setup_error = (run.stderr.strip().splitlines() or ["bwrap exited during setup"])[-1]
            return run
        finally:
            for fd in pipes:
                os.close(fd)

    def _plan_binds(self, binds: Sequence[Bind]):
        """(staging mounts, uid/gid to drop to, binds as bwrap sees them)."""
        binds = [*interpreter_binds(self.python), *binds]
        if not self._root:
            return None, None, binds
        root = _staging_root()
        stage, shown = [], []
        for i, b in enumerate(binds):
            is_dir = os.path.isdir(b.host)
            point = os.path.join(root, f"{'d' if is_dir else 'f'}{i}")
            if is_dir:
                os.makedirs(point, exist_ok=True)
            elif not os.path.lexists(point):
                with open(point, "ab"):
                    pass
            stage.append((b.host.encode(), point.encode()))
            shown.append(Bind(point, b.inside, b.writable))
        return stage, (self.limits.uid, self.limits.gid), shown

    def _wait(self, proc: subprocess.Popen, argv: Sequence[str], t0: float, timeout: float,
              out_r: int, err_r: int, stdin_pipe: tuple[int, list[int]], stdin: bytes, res_r: int,
              ns: str | None, pidfd: int | None, token: str, jailed: bool) -> JailRun:
        lim = self.limits
        in_w, open_fds = stdin_pipe

        def close_stdin() -> None:  # EOF for the command; the caller closes every other pipe
            if in_w in open_fds:
                open_fds.remove(in_w)
                os.close(in_w)

        out, err = _Capped(lim.max_output_kb << 10), _Capped(lim.max_output_kb << 10)
        chan = bytearray()
        chan_limit = 16 << 20
        sel = selectors.DefaultSelector()
        sinks: dict[int, Any] = {out_r: out, err_r: err}
        if res_r >= 0:
            sinks[res_r] = chan
        for fd in sinks:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        pending = memoryview(stdin)
        if pending:
            os.set_blocking(in_w, False)
            sel.register(in_w, selectors.EVENT_WRITE)
        else:
            close_stdin()
        deadline = t0 + timeout
        timed_out = over_limit = False
        exited_at = None
        watchdog = not jailed and self._root  # RLIMIT_NPROC does not bind root
        base_tasks = _system_tasks() if watchdog else 0
        try:
            while sel.get_map():
                now = time.monotonic()
                if now >= deadline:
                    timed_out = True
                    break
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > 1.0:
                    break  # output held open by a leftover process: it is killed below
                for key, _ in sel.select(min(deadline - now, 0.05 if watchdog else 0.25)):
                    fd = key.fd
                    if fd == in_w:
                        try:
                            n = os.write(in_w, pending[:65536])
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            n = len(pending)
                        pending = pending[n:]
                        if not pending:
                            sel.unregister(in_w)
                            close_stdin()
                        continue
                    try:
                        data = os.read(fd, 65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        sel.unregister(fd)
                        continue
                    sink = sinks[fd]
                    if sink is chan:
                        if len(chan) < chan_limit:
                            chan += data
                    else:
                        sink.add(data)
                if (watchdog and _system_tasks() - base_tasks > lim.max_processes
                        and len(_with_marker(token.encode())) > lim.max_processes):
                    over_limit = True
                    break
        finally:
            sel.close()
            survivors = self._finish(proc, ns, pidfd, token, jailed)
        return JailRun(list(argv), proc.returncode if not timed_out else None, timed_out,
                       time.monotonic() - t0, out.text(), err.text(), bytes(chan),
                       survivors=survivors, process_limit_hit=over_limit,
                       output_dropped=out.dropped + err.dropped)

    def _finish(self, proc: subprocess.Popen, ns: str | None, pidfd: int | None, token: str,
                jailed: bool) -> list[int]:
        """Kill whatever is left of the run and verify that nothing is: returns the processes
        that were still alive after the first kill (they were then killed one by one).
        """
        if pidfd is not None:  # the PID namespace's init: its death takes every member with it
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
        if not jailed:
            for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL),):
                try:
                    kill()
                except OSError:
                    pass
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()
        if pidfd is not None:
            # the init exits only once the kernel has killed and reaped the namespace
            sel = selectors.DefaultSelector()
            sel.register(pidfd, selectors.EVENT_READ)
            sel.select(5.0)
            sel.close()
            os.close(pidfd)
        if jailed and ns is None:
            return []

        def members() -> list[int]:
            if jailed:
                return _in_pid_ns(ns)  # type: ignore[arg-type]
            sid = {p for p in _live_pids() if _stat_fields(p)[3:4] == [str(proc.pid).encode()]}
            return sorted(sid | set(_with_marker(token.encode())))

        def belongs(p: int) -> bool:
            return p in members()

        left = members()
        first = list(left)
        deadline = time.monotonic() + 5.0
        while left and time.monotonic() < deadline:
            for p in left:
                _kill_verified(p, belongs)
            time.sleep(0.02)
            left = members()
        if first and jailed:
            log.error("processes %s of a jailed run were alive after its PID namespace was killed", first)
        if left:
            log.error("processes %s of a sandboxed run could not be killed", left)
        return first if jailed else left


@functools.lru_cache(maxsize=1)
def _staging_root() -> str:
    """Where the launcher (as root, in its private mount namespace) mounts the bind sources, so
    that bwrap, running as the unprivileged uid, can reach them: ``/tmp/vortex-jail-<euid>``,
    kept for the life of the machine's /tmp. On the host its entries stay empty (the mounts exist
    only in each launcher's namespace), so concurrent jails share it. Only used when it is a
    directory of ours that nobody else can write; else a fresh one is made.
    """
    path = f"/tmp/vortex-jail-{os.geteuid()}"
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        path = tempfile.mkdtemp(prefix="vortex-jail-")
    os.chmod(path, 0o755)
    return path


def _drain_bytes(fd: int, timeout: float) -> bytes:
    """Everything readable from ``fd`` until EOF (or ``timeout``)."""
    data = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(deadline - time.monotonic()):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        sel.close()
    return bytes(data)


def _drain(fd: int) -> str:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536).decode("utf-8", "replace")
    except OSError:
        return ""


@functools.cache
def _probe(exe: str | None, uid: int, gid: int) -> Isolation:
    root = os.geteuid() == 0
    host_uid = uid if root else os.getuid()
    if exe is None:
        return Isolation(False, None, os.getuid(), "bubblewrap (bwrap) is not installed; "
                         "install it: apt-get install bubblewrap (Debian/Ubuntu), "
                         "dnf install bubblewrap (Fedora)")
    tool = _bwrap_version(exe)
    limits = SandboxLimits(timeout_secs=30, memory_mb=1024, cpu_secs=30, max_processes=16,
                           uid=uid, gid=gid)
    jail = Jail(limits, Isolation(True, tool, host_uid))
    run = jail.run([sys.executable, "-I", "-S", "-c", "import os; print(os.getuid(), os.getgid())"],
                   cwd="/tmp")
    if run.setup_error is None and run.ok and run.stdout.split() == [str(SANDBOX_UID)] * 2:
        return Isolation(True, tool, host_uid)
    why = run.setup_error or (run.stderr.strip().splitlines() or [run.describe()])[-1]
    return Isolation(False, tool, os.getuid(), f"{tool} cannot build the jail here: {why}")


def probe_isolation(limits: SandboxLimits | None = None) -> Isolation:
    """What isolation this host offers (cached per uid/gid; one jailed ``python -c`` run).

    When commands cannot be jailed, the fallback is reported to :mod:`vortex.degraded`
    (a warning logged once per process, shown by ``system_status`` and ``vortex status``).
    """
    limits = limits or SandboxLimits()
    iso = _probe(shutil.which("bwrap"), limits.uid, limits.gid)
    if not iso.isolated:
        degraded.report("rsi sandbox", "no verdicts: every sandbox test is errored "
                        "(require_isolation)" if limits.require_isolation else
                        "candidate patches tested unjailed (no namespaces, no quota); "
                        "none applied automatically", iso.cause)
    return iso
