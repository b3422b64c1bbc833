"""Processes that try to outlive the test: after ``Sandbox.test`` returns none is alive (the
fixture scans the host's /proc for the token in every process's command line and environment)."""

import pytest

from redteam_support import BROKEN, GOOD

DAEMON = r'''
import ctypes, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)       # PR_SET_PDEATHSIG 0
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.closerange(0, 3)
        time.sleep(300)
    os._exit(0)
'''
#: a process with a clean environment: only its command line carries the token
CLEAN_ENV = r'''
import subprocess, sys
subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(300)  # {T}"],
                 env={}, start_new_session=True)
'''
#: holds the output pipes open, so the run's output never ends by itself
HOLDS_OUTPUT = r'''
import subprocess
subprocess.Popen(["sh", "-c", "trap '' TERM HUP; while true; do echo tick; sleep 1; done"],
                 start_new_session=True)
'''
HANGS = "import time\nwhile True:\n    time.sleep(0.1)\n"

CASES = {
    "double fork, setsid, no parent-death signal, ignores SIGTERM": (DAEMON + GOOD, "passed"),
    "the same from a failing candidate": (DAEMON + BROKEN, "rejected"),
    "a clean-environment daemon": (CLEAN_ENV + GOOD, "passed"),
    "holds the output pipes open": (HOLDS_OUTPUT + GOOD, "passed"),
    "a daemon, then hangs until the timeout": (DAEMON + HANGS, "errored"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_nothing_outlives_the_test(attack, name):
    code, verdict = CASES[name]
    res = attack.run(attack.mod_diff(code.replace("{T}", attack.token)))
    got = "passed" if res.passed else "errored" if res.errored else "rejected"
    assert got == verdict, (name, res.errors)
    if verdict == "errored":
        assert res.timed_out


def test_nothing_outlives_a_benchmark_run(attack):
    res = attack.run(attack.mod_diff("import sys\nif 'bench.py' in sys.argv[0]:\n"
                                     + "\n".join("    " + line for line in DAEMON.strip().split("\n"))
                                     + "\n" + GOOD), bench=True, repeats=2)
    assert not res.errored and res.benchmark_runs == 2, res.errors


def test_nothing_outlives_a_killed_vortex(attack, tmp_path):
    """SIGKILL the process running Sandbox.test while the candidate's daemon and its hanging
    tests run: the jail dies with it (parent-death signals on bwrap and its init)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from jail_support import processes_with

    diff = attack.mod_diff(DAEMON + HANGS)
    (tmp_path / "p.diff").write_text(diff)
    code = ("import sys\nfrom vortex.rsi.sandbox import Sandbox\nfrom vortex.rsi.settings import load_settings\n"
            f"Sandbox(load_settings({attack.tree!r}), base_dir={str(tmp_path / 'sbx2')!r})"
            f".test(open({str(tmp_path / 'p.diff')!r}).read())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(processes_with(attack.token)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    if len(processes_with(attack.token)) < 2:
        proc.kill()
        pytest.fail(f"the candidate did not start: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 5
    while processes_with(attack.token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(attack.token) == []
