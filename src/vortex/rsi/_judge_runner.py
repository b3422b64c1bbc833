"""The judge's runner: started by the sandbox as ``python -I -B _judge_runner.py`` inside the jail.

Standard library only, and run as a script (not imported from the package), so nothing of the
tree under test is loaded before it has set things up. It reads its order (JSON) from stdin,
which it then replaces by ``/dev/null``:

``{"nonce": str, "mode": "pytest" | "script", "root": the tree, "lib": dir of the vortex
package or null, "paths": [tree dirs for sys.path], "args": [...], "script": path (mode
"script")}``

and reports on the descriptor named by ``$VORTEX_RESULT_FD`` (never on its printed output), one
JSON line per record, each carrying the nonce, which exists only in this process's memory:

* ``ready``: the runner and its tools (pytest) are imported; from here on, tree code runs.
* ``error``: the judge could not run (pytest not importable, ...), with the cause.
* ``result``: written once, after pytest or the script returned; a run that ends any other way
  (``os._exit`` in the code under test, an exit handler, a signal) has no result.

``sys.path`` is the standard library, then the Vortex package, then site-packages, and only
then the tree's paths: a ``json.py``, ``pytest.py`` or ``sitecustomize.py`` in the tree shadows
nothing (``-I`` also ignores ``PYTHON*`` variables and the user site). The process is made
non-dumpable, so other processes of the run cannot read its memory (the nonce) or open its
descriptors through ``/proc``.

Tampering: every function and class (and class attribute) of the machinery that produces the
verdict (pytest, ``_pytest``, pluggy for the tests; ``builtins``, ``time``, ``json`` and
``sys.stdout`` for a benchmark) is recorded by identity, its code object too, before tree code
runs, and compared after the run; what the code under test replaced is reported in
``result["tampered"]``. Each skip and xfail is recorded with the file that raised it (the real
traceback, ``__tracebackhide__`` ignored). Code that sets out to defeat this in memory can (it
runs in the same process); the point is that gaming the verdict needs such deliberate code,
which a reviewer sees, and that such a change is never low risk.
"""

import ctypes
import json
import os
import sys
import types

_write = os.write
_dumps = json.dumps


#: What is watched for tampering: pytest's machinery (tests), what measures and prints (benchmark).
_WATCHED = {"pytest": ("pytest", "_pytest", "pluggy"), "script": ("builtins", "time", "json")}


def _snapshot(watched):
    """(module name, attribute[, class attribute]) -> (object, code object or None), for the
    loaded modules named by ``watched`` (and their submodules).
    """
    out: dict[tuple[str, ...], tuple[object, types.CodeType | None]] = {}
    for name, mod in list(sys.modules.items()):
        if not isinstance(mod, types.ModuleType) or not any(
                name == w or name.startswith(w + ".") for w in watched):
            continue
        out[(name,)] = (mod, None)
        for key, val in list(vars(mod).items()):
            if isinstance(val, (types.FunctionType, types.BuiltinFunctionType, type)):
                out[(name, key)] = (val, getattr(val, "__code__", None))
            if isinstance(val, type) and val.__module__ == name:
                for attr, member in list(vars(val).items()):
                    func = getattr(member, "__func__", member)  # classmethod / staticmethod
                    if isinstance(func, types.FunctionType):
                        out[(name, key, attr)] = (member, func.__code__)
    return out


def _tampered(before):
    changed = []
    for key, (obj, code) in before.items():
        mod = sys.modules.get(key[0])
        try:
            if len(key) == 1:
                now = mod
            elif len(key) == 2:
                now = vars(mod).get(key[1])
            else:
                now = vars(vars(mod).get(key[1])).get(key[2])
        except TypeError:
            now = None
        now_code = getattr(getattr(now, "__func__", now), "__code__", None)
        if now is not obj or (code is not None and now_code is not code):
            changed.append(".".join(key))
    return changed


def _origin(tb, root, tool_dirs):
    """Where a skip or xfail was raised: the innermost frame of the traceback outside pytest and
    this runner (``__tracebackhide__`` is not honoured here), relative to the tree; None when
    pytest itself raised it (a ``skip``/``skipif``/``xfail`` mark of the test).
    """
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    for name in reversed(frames):
        path = os.path.abspath(name)
        if not any(path.startswith(d) for d in tool_dirs) and path != os.path.abspath(__file__):
            return os.path.relpath(path, root) if path.startswith(root + os.sep) else path
    return None


class _Recorder:
    """A pytest plugin: every test's outcome by node id, where each skip came from, collection
    errors, loaded conftests.
    """

    def __init__(self, root, tool_dirs):
        self.root, self.tool_dirs = root, tool_dirs
        self.outcomes = {}
        self.origins = {}
        self.collect_errors = []
        self.conftests = []
        self.before = None

    def pytest_runtest_makereport(self, item, call):  # a wrapper, see main()
        rep = yield
        if rep.skipped and call.excinfo is not None:
            self.origins[rep.nodeid] = _origin(call.excinfo.tb, self.root, self.tool_dirs)
        return rep

    def pytest_load_initial_conftests(self, early_config, parser, args):
        self.before = _snapshot(_WATCHED["pytest"])

    def pytest_plugin_registered(self, plugin, manager):
        path = getattr(plugin, "__file__", None)
        if path and os.path.basename(path) == "conftest.py":
            self.conftests.append(path)

    def pytest_collectreport(self, report):
        if report.failed:
            self.collect_errors.append(report.nodeid or "<session>")

    def pytest_runtest_logreport(self, report):
        nid, xfail = report.nodeid, hasattr(report, "wasxfail")
        if report.when == "setup":
            if report.failed:
                self.outcomes[nid] = "error"
            elif report.skipped:
                self.outcomes[nid] = "xfailed" if xfail else "skipped"
        elif report.when == "call":
            if xfail:
                self.outcomes[nid] = "xfailed" if report.skipped else "xpassed"
            else:
                self.outcomes[nid] = report.outcome
        elif report.failed:  # teardown
            self.outcomes[nid] = "error"


class _Capture:
    """sys.stdout during the benchmark script: kept (to a limit) and passed through."""

    def __init__(self, real, limit):
        self.real, self.limit, self.parts, self.size = real, limit, [], 0

    def write(self, text):
        if self.size < self.limit:
            self.parts.append(text[: self.limit - self.size])
            self.size += len(self.parts[-1])
        return self.real.write(text)

    def flush(self):
        self.real.flush()

    def __getattr__(self, name):
        return getattr(self.real, name)


#: The judge is background work, as training is: below the machine's serving processes.
JUDGE_NICE = 10
AUTOGROUP_NICE = 19


def _yield_to_serving():
    """``JUDGE_NICE`` added to this process's niceness (what it starts inherits it) and its
    autogroup's nice set to ``AUTOGROUP_NICE``: the sandbox always gives the judge a session of
    its own (bwrap's ``--new-session``, led by bwrap inside the jail; ``start_new_session``
    unjailed), so that group holds the sandbox's processes only. On Linux with autogroups (on in
    most distributions' kernels) every session is a group and groups share the CPU as equals:
    without this, a judge running a service's tests and benchmark took the CPU from the serving
    processes as an equal, and all of it from SCHED_IDLE training (see
    ``vortex.training.worker.lower_priority``). Failures are ignored: the judge still judges.
    """
    try:
        os.nice(JUDGE_NICE)
    except OSError:
        pass
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(AUTOGROUP_NICE))
    except OSError:
        pass


def main():
    spec = b""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        spec += chunk
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    order = json.loads(spec)
    nonce = order["nonce"]
    fd = int(os.environ.pop("VORTEX_RESULT_FD"))
    os.set_inheritable(fd, False)
    _yield_to_serving()  # started by the sandbox (it gave the result descriptor): its own session
    try:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    except (OSError, AttributeError):
        pass

    def emit(kind, **data):
        line = (_dumps({"nonce": nonce, "kind": kind, **data}) + "\n").encode()
        while line:
            line = line[_write(fd, line):]

    sys.dont_write_bytecode = True
    if order.get("lib"):
        first_site = next((i for i, p in enumerate(sys.path)
                           if p.endswith(("site-packages", "dist-packages"))), len(sys.path))
        sys.path.insert(first_site, order["lib"])

    if order["mode"] == "pytest":
        # plugins are the ones the original's configuration names (-p), not whatever is installed
        os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        try:
            import pytest
        except BaseException as exc:
            emit("error", error=f"{type(exc).__name__}: {exc}")
            return 3
        # before plugins' own set-up patches (undone again when pytest.main returns) and before
        # conftests and test modules load
        _Recorder.pytest_load_initial_conftests = pytest.hookimpl(  # type: ignore[method-assign]
            tryfirst=True)(_Recorder.pytest_load_initial_conftests)
        _Recorder.pytest_runtest_makereport = pytest.hookimpl(  # type: ignore[method-assign]
            wrapper=True)(_Recorder.pytest_runtest_makereport)
        import _pytest
        import pluggy

        tools = [os.path.dirname(os.path.abspath(str(m.__file__))) + os.sep
                 for m in (pytest, _pytest, pluggy)]
        recorder = _Recorder(order["root"], tools)
        emit("ready", pytest=pytest.__version__)
        sys.path.extend(order["paths"])
        exit_code = int(pytest.main(order["args"], plugins=[recorder]))
        emit("result", exit=exit_code, outcomes=recorder.outcomes, origins=recorder.origins,
             collect_errors=recorder.collect_errors, conftests=recorder.conftests,
             tampered=_tampered(recorder.before or {}))
        return 0

    import runpy

    before = _snapshot(_WATCHED["script"])
    emit("ready")
    sys.path.extend(order["paths"])
    sys.argv = [order["script"], *order["args"]]
    capture = _Capture(sys.stdout, int(order.get("max_capture", 1 << 20)))
    sys.stdout = capture
    code = 0
    try:
        runpy.run_path(order["script"], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        replaced = sys.stdout is not capture
        sys.stdout = capture.real
    objects = []
    for raw_line in "".join(capture.parts).splitlines():
        line = raw_line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                objects.append(obj)
    tampered = _tampered(before) + (["sys.stdout"] if replaced else [])
    emit("result", exit=code, objects=objects[:8], tampered=tampered)
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # the record is written; exit handlers of the code under test change nothing
