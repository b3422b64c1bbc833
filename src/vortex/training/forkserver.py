"""A warm start for training workers: one process imports torch once and forks every worker.

A training worker started as a fresh interpreter spends about 1.7 s of CPU importing torch
before it trains for a fraction of that, and a run with a swap during it starts two workers
(the run, then the validation against the new active version). On a machine that serves at
the same time, that CPU is taken from the serving workers: it was most of the training's cost
in ``benchmarks/bench_http.py``'s busy phase. :class:`ForkServer` starts
``python -m vortex.training.forkserver`` once; that process imports torch and the worker's
modules, then forks each worker on request, so a worker starts in milliseconds.

What a forked worker shares with a fresh one: it runs :func:`vortex.training.worker.main` with
the same arguments and environment, in a process group of its own (what a cancelled run
kills) in the launcher's session, at the same priority, its output in its log file, and it
dies with the process that started it. The service's own modules (the model factory) are
*not* imported ahead: a worker imports them after the fork, so a factory changed on disk (an
applied RSI patch) is what the next run uses. The server runs at the workers' priority (their
niceness, and their SCHED_IDLE policy when they have it): its imports and forks are training's
work too, and a server that imports torch while the machine serves must not delay a serving
process any more than a worker may.

What the server loads ahead (:data:`PRELOAD`): torch, safetensors, pyarrow and the worker's
vortex modules, and FluxDynamics' Numba kernels (from Numba's cache). What a worker does after
the fork, as a fresh interpreter would have it: its own process group, output, working directory
(the launcher's), environment (``os.environ``; ``/proc/<pid>/environ`` shows the server's, so
the registry's storage options never appear there) and a fresh seed of numpy's global
generator.

Why fork is safe here: the server forks from its only thread. Its environment keeps the
imports from starting threads (numpy's OpenBLAS pool at one thread; pyarrow's jemalloc without
its purging thread), and it checks the thread count before it says it is ready; with another
thread running it refuses to serve and the launcher starts workers the cold way. It ends with
the launcher's process: at the end of its input, or when its parent changes.

The protocol, one JSON object per line: the launcher writes ``{"spawn": id, "argv", "env",
"log", "cwd"}`` or ``{"kill": pid}`` to the server's stdin; the server answers ``{"ready": pid}``
once, ``{"spawned": id, "pid"}`` (or ``{"spawned": id, "error"}``) and ``{"exited": pid,
"status"}`` (negative: killed by that signal, as :attr:`subprocess.Popen.returncode`). The
server reaps its children, so it is also the one that kills them: a pid it has not reaped
cannot have been reused. At end of input it kills its workers and exits.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import weakref
from typing import Any

from ..errors import TrainingError

__all__ = ["ForkServer", "ForkedWorker"]

log = logging.getLogger(__name__)

_PARENT_CHECK_SECS = 1.0  # how often the server checks that the launcher's process lives

_SERVERS: weakref.WeakSet[ForkServer] = weakref.WeakSet()  # this process's servers


def _after_fork_in_child() -> None:
    for server in list(_SERVERS):
        server._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: What the server imports before it forks: torch and what a worker runs with it.
PRELOAD = ("torch", "torch.distributed", "torch.nn.parallel", "safetensors.torch", "pyarrow.ipc",
           "pyarrow.compute", "vortex.training.worker", "vortex.training.models", "vortex.training.registry",
           "vortex.training.validation", "vortex.training.buffer", "vortex.training.pipeline",
           "vortex.kernels.flux")


_PRIORITY_ENV = "VORTEX_FORKSERVER_PRIORITY"  # "<nice> <sched_idle 0|1>"


def _server_env(env: dict[str, str]) -> dict[str, str]:
    """The server's environment: ``env`` with the thread pools that would start at import
    kept from starting (the workers set their torch threads themselves).
    """
    arrow_malloc = env.get("JE_ARROW_MALLOC_CONF")
    return {**env, "OPENBLAS_NUM_THREADS": "1",  # numpy's BLAS pool
            # pyarrow's jemalloc starts a purging thread when the library loads
            "JE_ARROW_MALLOC_CONF": f"{arrow_malloc},background_thread:false" if arrow_malloc
            else "background_thread:false"}


class ForkedWorker:
    """A worker forked by a :class:`ForkServer`: the part of :class:`subprocess.Popen` the
    launcher uses (``pid``, ``returncode``, :meth:`poll`, :meth:`wait`), and :meth:`kill_group`.
    """

    def __init__(self, server: ForkServer, pid: int) -> None:
        self._server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status once the worker ended (negative: killed by that signal), else None."""
        if self.returncode is None:
            self.returncode = self._server._exit_status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker to end; its exit status (:class:`subprocess.TimeoutExpired`)."""
        if self.returncode is None:
            self.returncode = self._server._wait_exit(self.pid, timeout)
        return self.returncode

    def kill_group(self) -> None:
        """SIGKILL the worker's process group (the worker and what it started).

        Never raises: if the server is gone, so is the worker (its parent-death signal).
        """
        if self.poll() is None:
            try:
                self._server._send({"kill": self.pid})
            except TrainingError:
                pass


class ForkServer:
    """The launcher's side: start the server, fork workers from it, learn how they ended.

    Starting one returns at once; its imports take seconds (:meth:`wait_ready`).

    Parameters
    ----------
    env
        The server's environment (the worker's ``PYTHONPATH`` included: it decides which
        vortex and torch the server imports). Each worker gets its own environment at
        :meth:`spawn`.
    nice
        Added to the server's niceness before it imports anything (the workers' ``--nice``: the
        server's work, its imports and forks, is training's too). A worker's own ``--nice``
        counts from the launcher's niceness all the same.
    sched_idle
        Switch the server to the SCHED_IDLE policy before it imports anything (the workers'
        ``--sched-idle``). Measured in ``benchmarks/bench_http.py``: at nice 10 alone, the
        server's 1.7 s of imports under load held a core for ~4.4 ms slices, and a serving
        process woken meanwhile waited for it; a SCHED_IDLE task is preempted at once. A worker
        forked without ``--sched-idle`` goes back to the normal policy.
    """

    def __init__(self, env: dict[str, str], nice: int = 0, sched_idle: bool = False) -> None:
        self.env = dict(env)
        self.nice = nice
        self.sched_idle = sched_idle
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__],
                env={**_server_env(env), _PRIORITY_ENV: f"{nice} {int(sched_idle)}"},
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, process_group=0)
        except OSError as exc:
            raise TrainingError(f"the training fork server could not start: {exc}") from exc
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._messages: dict[str, dict[int, Any]] = {"spawned": {}, "exited": {}}
        self._ready: int | None = None
        self._closed = False  # the server's output ended: it is gone
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, name="vortex-forkserver-reader", daemon=True)
        self._reader.start()
        _SERVERS.add(self)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the server to finish its imports: True once it
        has, False if it is still importing (it goes on: on a loaded machine, under SCHED_IDLE,
        that takes as long as the machine has no idle CPU to give).

        :class:`TrainingError` if it exited at start-up.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._ready is not None or self._closed, timeout)
            if self._ready is not None:
                return True
            if not self._closed:
                return False
        self.close()
        raise TrainingError(f"the training fork server exited at start-up (status {self._proc.returncode}); "
                            "see its output on this process's stderr")

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._proc.pid

    def alive(self) -> bool:
        """True while the server runs and answers."""
        with self._cond:
            return not self._closed and self._proc.poll() is None

    def spawn(self, argv: list[str], env: dict[str, str], log_path: str,
              timeout: float = 30.0) -> ForkedWorker:
        """Fork a worker running ``vortex.training.worker`` with ``argv`` and ``env`` in this
        process's working directory, its output in ``log_path`` (truncated).

        A server still importing after ``timeout`` is left to finish (:class:`TrainingError`).
        A ready server that does not answer within ``timeout`` is closed (with whatever it
        forked) before :class:`TrainingError`: a late fork must not leave a worker nobody tracks.
        """
        if not self.wait_ready(timeout):
            raise TrainingError(f"the training fork server was still importing after {timeout} s")
        with self._cond:
            self._next_id += 1
            request = self._next_id
        self._send({"spawn": request, "argv": argv, "env": env, "log": log_path, "cwd": os.getcwd()})
        with self._cond:
            spawned = self._messages["spawned"]
            answered = self._cond.wait_for(lambda: request in spawned or self._closed, timeout)
        if not answered:
            self.close()
            raise TrainingError(f"the training fork server did not fork a worker within {timeout} s")
        with self._cond:
            if request not in spawned:
                raise TrainingError("the training fork server exited before forking the worker")
            reply = spawned.pop(request)
        if "error" in reply:
            raise TrainingError(f"the training fork server could not fork a worker: {reply['error']}")
        return ForkedWorker(self, int(reply["pid"]))

    def close(self, timeout: float = 10.0) -> None:
        """End the server (it kills the workers still running) and wait for it."""
        with self._cond:
            importing = self._ready is None and not self._closed
        if importing:  # it reads its end of input only after its imports: seconds away
            self._proc.kill()
        try:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout)  # it reads the server's output to the end, then closes it

    # ------------------------------------------------------------------ internals
    def _send(self, message: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            with self._send_lock:
                stdin.write(json.dumps(message).encode() + b"\n")
                stdin.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed by close()
            raise TrainingError(f"the training fork server is gone ({exc})") from exc

    def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            with stdout:
                for line in stdout:
                    message = json.loads(line)
                    with self._cond:
                        if "ready" in message:
                            self._ready = int(message["ready"])
                        elif "spawned" in message:
                            self._messages["spawned"][int(message["spawned"])] = message
                            if "pid" in message:  # a reused pid: an old status is not its
                                self._messages["exited"].pop(int(message["pid"]), None)
                        elif "exited" in message:
                            self._messages["exited"][int(message["exited"])] = int(message["status"])
                        self._cond.notify_all()
        except Exception:
            log.exception("reading the training fork server's answers failed; closing it")
            self._proc.kill()
        finally:  # whatever ended the reading, nobody may wait for an answer any more
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _forget_after_fork(self) -> None:
        """In a child forked from the launcher's process: let go of the server's pipes (the
        server must see its end of input when the launcher dies) and never use it.
        """
        self._closed = True
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                try:  # /dev/null over the descriptor: the Python file object stays valid
                    devnull = os.open(os.devnull, os.O_RDWR)
                    os.dup2(devnull, stream.fileno())
                    os.close(devnull)
                except (OSError, ValueError):
                    pass

    def _exit_status(self, pid: int) -> int | None:
        with self._cond:
            exited = self._messages["exited"]
            if pid in exited:
                return exited.pop(pid)
            # the server is gone, and its workers with it (their parent-death signal)
            return -signal.SIGKILL if self._closed else None

    def _wait_exit(self, pid: int, timeout: float | None) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._messages["exited"] or self._closed, timeout):
                raise subprocess.TimeoutExpired(f"forked worker {pid}", timeout or 0)
        status = self._exit_status(pid)
        assert status is not None
        return status


# ---------------------------------------------------------------------- the server process
def _serve() -> int:
    """Main loop of ``python -m vortex.training.forkserver`` (see the module docstring)."""
    # It ends with the launcher's process: at the end of its input, which the kernel closes
    # when that process dies, or (should a forked child of it hold the pipe) when its parent
    # changes. Not the parent-death signal: that follows the launcher's *thread* that started
    # this server, and a run's thread ending must not kill the next run's workers.
    parent = int(os.environ.get("VORTEX_PARENT_PID") or os.getppid())
    if os.getppid() != parent:
        return 1
    nice, sched_idle = (int(x) for x in os.environ.pop(_PRIORITY_ENV, "0 0").split())
    if nice:
        try:
            os.nice(nice)
        except OSError as exc:
            print(f"vortex fork server: could not lower its priority: {exc}", file=sys.stderr)
            nice = 0
    if sched_idle:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError) as exc:
            print(f"vortex fork server: could not switch to SCHED_IDLE: {exc}", file=sys.stderr)
            sched_idle = 0
    # the protocol gets private descriptors; fd 0 and 1 become /dev/null and stderr, so a
    # library that prints cannot corrupt it
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    # FluxDynamics' Numba kernels: loaded from Numba's cache (or compiled) once, here
    importlib.import_module("vortex.kernels.flux").warmup()
    threads = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["1"]
    if len(threads) != 1:
        print(f"vortex fork server: {len(threads)} threads after the imports; forking would "
              "copy their locks half-held: not serving", file=sys.stderr)
        return 1
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD writes to wake_w
    private = (requests, replies, wake_r, wake_w)
    children: set[int] = set()

    def reply(message: dict[str, Any]) -> None:
        os.write(replies, json.dumps(message).encode() + b"\n")

    reply({"ready": os.getpid()})
    pending = b""
    try:
        while True:
            try:
                readable, _, _ = select.select([requests, wake_r], [], [], _PARENT_CHECK_SECS)
            except InterruptedError:
                continue
            chunk = os.read(requests, 65536) if requests in readable else None
            if chunk == b"" or os.getppid() != parent:  # the launcher closed us, or died
                return 0
            if wake_r in readable:
                os.read(wake_r, 4096)
            pending += chunk or b""
            *lines, pending = pending.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if "kill" in message:
                    if int(message["kill"]) in children:  # not reaped: the pid is still its
                        _kill_group(int(message["kill"]))
                else:
                    reply(_fork(message, private, children, nice, bool(sched_idle)))
            _reap(children, reply)
    finally:  # no worker outlives the server's purpose
        for pid in children:
            _kill_group(pid)


def _less_nice(argv: list[str], inherited: int) -> list[str]:
    """``argv`` with its ``--nice`` lowered by the ``inherited`` increment (the server's), so a
    forked worker ends as nice as a fresh one would.
    """
    argv = list(argv)
    if inherited and "--nice" in argv[:-1]:
        i = argv.index("--nice") + 1
        argv[i] = str(max(0, int(argv[i]) - inherited))
    return argv


def _fork(request: dict[str, Any], private: tuple[int, ...], children: set[int], nice: int,
          sched_idle: bool) -> dict[str, Any]:
    server = os.getpid()  # before the fork: a child must not take init for its parent
    try:
        pid = os.fork()
    except OSError as exc:
        return {"spawned": request["spawn"], "error": str(exc)}
    if pid:
        children.add(pid)
        return {"spawned": request["spawn"], "pid": pid}
    status = 1
    try:  # the worker: never return into the server's loop
        os.setpgid(0, 0)  # a group of its own (what a cancel kills), in the launcher's session:
        # its autogroup, where the worker's lowered priority counts (worker.lower_priority)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in private:
            os.close(fd)
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["VORTEX_PARENT_PID"] = str(server)  # die_with_parent's check
        if "numpy" in sys.modules:  # its global generator, as a fresh interpreter seeds it
            sys.modules["numpy"].random.seed()
        from . import worker

        argv = _less_nice(request["argv"], nice)
        if sched_idle and "--sched-idle" not in argv:  # the policy a fresh worker would have
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        sys.argv = [worker.__file__, *argv]
        status = worker.main(argv)
    except SystemExit as exc:  # e.g. argparse's usage error: end as the interpreter would
        if exc.code is None or isinstance(exc.code, int):
            status = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _reap(children: set[int], reply: Any) -> None:
    while children:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        reply({"exited": pid, "status": os.waitstatus_to_exitcode(wait_status)})


def _kill_group(pid: int) -> None:
    """SIGKILL the worker's process group, and the worker itself: a worker forked a moment ago
    may not have made its own group yet (its setpgid() comes first thing after the fork).
    """
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    sys.exit(_serve())
