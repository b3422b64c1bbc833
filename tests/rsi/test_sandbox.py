"""Sandbox: statistics helpers, and containment of hostile candidates.

Each hostile case is a diff that replaces ``mod.py`` of a small target tree (whose tests import
it) by code that misbehaves. Each must come back as a failed TestResult that says what happened,
with the real tree byte-for-byte unchanged and nothing left running.
"""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from rsi_support import tree_digest
from vortex.rsi.diffs import make_diff
from vortex.rsi.sandbox import (Sandbox, isolation_support, paired_interval, parse_pytest_summary,
                                t_quantile)
from vortex.rsi.settings import load_settings

MOD = "# the module under test\nVALUE = 1\n"


def test_t_quantile_matches_scipy():
    from scipy import stats

    for df in (1, 2, 3, 4, 5, 6, 7, 10, 30, 100, 999):
        for p in (0.9, 0.95, 0.975, 0.995):
            exact = stats.t.ppf(p, df)
            assert t_quantile(p, df) == pytest.approx(exact, rel=1e-9)
    assert t_quantile(0.025, 5) == pytest.approx(stats.t.ppf(0.025, 5), rel=1e-9)
    assert t_quantile(0.975, 5000) == pytest.approx(stats.t.ppf(0.975, 5000), rel=1e-9)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.9, 0)


def test_paired_interval():
    mean, lo, hi = paired_interval([1.0, 2.0, 3.0], 0.95)
    assert mean == 2.0 and lo == pytest.approx(2 - 4.302652730 / 3 ** 0.5, rel=1e-8)
    assert hi == pytest.approx(4 - lo)
    with pytest.raises(ValueError):
        paired_interval([1.0], 0.95)


def test_parse_pytest_summary():
    assert parse_pytest_summary("....\n3 passed, 1 failed, 2 errors in 0.12s\n") == {
        "passed": 3, "failed": 1, "errors": 2, "skipped": 0}
    assert parse_pytest_summary("===== 5 passed, 1 skipped in 1.01s =====") == {
        "passed": 5, "failed": 0, "errors": 0, "skipped": 1}
    assert parse_pytest_summary("no summary here") is None


@pytest.fixture(params=["overlay", "copy"])
def hostile(request, tiny_tree, tmp_path):
    settings = load_settings(tiny_tree)
    sandbox = Sandbox(settings, base_dir=str(tmp_path / "sbx"))
    if request.param == "copy":
        sandbox.use_overlay = False  # the path taken where overlays cannot be mounted
    elif not sandbox.use_overlay:
        pytest.skip("this host cannot mount an overlay in the sandbox namespaces")
    before = tree_digest(tiny_tree)

    def run(code, **kw):
        res = sandbox.test(make_diff("mod.py", MOD, code), **kw)
        assert tree_digest(tiny_tree) == before
        assert os.listdir(sandbox.base_dir) == []  # cleaned up
        return res

    return run


def _stragglers(base_dir):
    """Processes whose working directory is inside the sandbox base directory."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.readlink(f"/proc/{pid}/cwd").startswith(base_dir):
                    found.append(pid)
            except OSError:
                pass
    return found


def test_good_diff_passes(hostile, tiny_tree):
    res = hostile("# the module under test\nVALUE = 2\n")
    assert res.passed and res.tests_run == 2 and res.tests_passed == 2 and res.tests_failed == 0
    assert res.improved is None and not res.errors[int(res.network_isolated):]


def test_failing_candidate_reported(hostile):
    res = hostile("# the module under test\nVALUE = 0\n")
    assert not res.passed and res.tests_failed == 1 and res.tests_passed == 1
    assert "tests failed" in res.errors[-1]


def test_diff_that_does_not_apply(tiny_tree, tmp_path):
    sandbox = Sandbox(load_settings(tiny_tree), base_dir=str(tmp_path / "sbx"))
    res = sandbox.test(make_diff("mod.py", "# something else\nVALUE = 7\n", "VALUE = 8\n"))
    assert not res.passed and "does not apply" in res.errors[-1] and res.tests_run == 0


@pytest.mark.parametrize("diff,why", [
    ("--- a/../escape.py\n+++ b/../escape.py\n@@ -0,0 +1 @@\n+x = 1\n", "escape"),
    ("--- /dev/null\n+++ /tmp/vortex-evil.py\n@@ -0,0 +1 @@\n+x = 1\n", "absolute"),
    ("--- a/link/f.txt\n+++ b/link/f.txt\n@@ -1 +1 @@\n-a\n+pwned\n", "outside the tree"),
])
def test_escaping_diffs_refused(tiny_tree, tmp_path, diff, why):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("a\n")
    os.symlink(outside, os.path.join(tiny_tree, "link"))
    before = tree_digest(tiny_tree)
    sandbox = Sandbox(load_settings(tiny_tree), base_dir=str(tmp_path / "sbx"))
    res = sandbox.test(diff)
    assert not res.passed and why in res.errors[-1]
    assert (outside / "f.txt").read_text() == "a\n"
    assert not os.path.exists("/tmp/vortex-evil.py")
    assert tree_digest(tiny_tree) == before


def test_hanging_suite_is_killed(hostile, tmp_path):
    t0 = time.monotonic()
    res = hostile("import subprocess, time\nsubprocess.Popen(['sleep', '300'])\n"
                  "while True:\n    time.sleep(0.1)\nVALUE = 1\n")
    assert time.monotonic() - t0 < 30
    assert not res.passed and res.timed_out and "timeout" in res.errors[-1]
    assert _stragglers(str(tmp_path / "sbx")) == []


def test_ten_gigabytes_refused(hostile):
    res = hostile("blob = bytearray(10 * 1024 ** 3)\nVALUE = 1\n")
    assert not res.passed and "MemoryError" in res.test_output


def test_fork_bomb_contained(hostile, tmp_path):
    t0 = time.monotonic()
    res = hostile("import os, time\nfor _ in range(100000):\n    try:\n        os.fork()\n"
                  "    except OSError:\n        time.sleep(0.01)\nVALUE = 1\n")
    assert not res.passed and not res.timed_out
    # stopped by RLIMIT_NPROC (fork fails: the suite then hangs in the loop or errors) or, as
    # root, by the process watchdog
    assert "too many processes" in res.errors[-1] or "BlockingIOError" in res.test_output \
        or res.tests_failed
    print(f"fork bomb: {res.errors[-1]} after {time.monotonic() - t0:.2f} s")
    deadline = time.monotonic() + 10  # the kernel needs a moment to reap a thousand processes
    while _stragglers(str(tmp_path / "sbx")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stragglers(str(tmp_path / "sbx")) == []


def test_huge_file_stopped_by_file_size_limit(hostile, tmp_path):
    res = hostile("with open('big.bin', 'wb') as fh:\n    for _ in range(1024):\n"
                  "        fh.write(b'\\0' * (1 << 20))\nVALUE = 1\n")
    assert not res.passed
    assert "SIGXFSZ" in res.errors[-1] or "File too large" in res.test_output


def test_environment_secret_not_visible(hostile, monkeypatch):
    secret = "s3cr3t-" + os.urandom(6).hex()
    monkeypatch.setenv("VORTEX_TEST_SECRET", secret)
    code = ("import os, sys, glob\nfound = [os.environ.get('VORTEX_TEST_SECRET', '')]\n"
            "for p in glob.glob('/proc/[0-9]*/environ') + ['/proc/%d/environ']:\n"
            "    try:\n        found.append(open(p, 'rb').read().decode('latin1'))\n"
            "    except OSError:\n        pass\n"
            "raise RuntimeError('SEEN:' + '|'.join(found))\n") % os.getpid()
    res = hostile(code)
    assert "SEEN:" in res.test_output
    assert secret not in res.test_output


def test_network_cut(hostile):
    if not isolation_support():
        pytest.skip("this host does not allow network namespaces; TestResult says network_isolated=False")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(srv.accept())
            except OSError:
                pass

    th = threading.Thread(target=serve)
    th.start()
    try:
        res = hostile(f"import socket\ns = socket.socket()\ns.settimeout(2)\n"
                      f"s.connect(('127.0.0.1', {port}))\nVALUE = 1\n")
    finally:
        stop.set()
        th.join()
        srv.close()
    assert res.network_isolated and not res.passed and not accepted
    assert "unreachable" in res.test_output.lower() or "OSError" in res.test_output


def test_real_tree_is_read_only_inside(hostile, tiny_tree):
    if not isolation_support():
        pytest.skip("no mount namespace on this host")
    target = os.path.join(tiny_tree, "mod.py")
    res = hostile(f"try:\n    open({target!r}, 'w').write('VALUE = 99\\n')\n    VALUE = 0\n"
                  f"except OSError as exc:\n    print(exc)\n    VALUE = 1\n")
    assert res.passed  # the write failed (read-only file system), so VALUE stayed 1


@pytest.mark.parametrize("mode", ["overlay", "copy"])
def test_judge_comes_from_the_original_tree(tiny_tree, tmp_path, mode):
    settings = load_settings(tiny_tree)
    weaken = make_diff("tests/test_mod.py", Path(tiny_tree, "tests", "test_mod.py").read_text(),
                       "def test_value():\n    assert True\n")
    extra = ("diff --git a/tests/test_extra.py b/tests/test_extra.py\nnew file mode 100644\n"
             "--- /dev/null\n+++ b/tests/test_extra.py\n@@ -0,0 +1,2 @@\n+def test_extra():\n+    pass\n")
    breaking = make_diff("mod.py", MOD, "VALUE = 0\n")
    sandbox = Sandbox(settings, base_dir=str(tmp_path / "sbx"))
    if mode == "copy":
        sandbox.use_overlay = False
    elif not sandbox.use_overlay:
        pytest.skip("no overlay on this host")
    res = sandbox.test(weaken + extra + breaking)
    # the original tests judged mod.py; the added test file was not collected
    assert not res.passed and res.tests_failed == 1 and res.tests_run == 2


def test_benchmark_paired_interval(tmp_path):
    root = tmp_path / "t"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_ok.py").write_text("def test_ok():\n    pass\n")
    (root / "speed.txt").write_text("10\n")
    (root / "bench.py").write_text(
        "import json, random\nv = float(open('speed.txt').read())\n"
        "print(json.dumps({'latency_ms': {'value': v + random.random(), 'better': 'lower'}}))\n")
    (root / "pyproject.toml").write_text(
        '[tool.vortex]\ntest_command = ["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]\n'
        'benchmark_command = ["{python}", "bench.py"]\njudge = ["tests", "bench.py"]\n'
        '[tool.vortex.benchmark]\nprimary = "latency_ms"\n')
    sandbox = Sandbox(load_settings(root), base_dir=str(tmp_path / "sbx"))
    faster = sandbox.test(make_diff("speed.txt", "10\n", "5\n"), repeats=4)
    assert faster.passed and faster.improved and faster.benchmark_runs == 4
    lo, hi = faster.delta_interval
    assert lo > 0 and lo <= faster.performance_delta <= hi
    assert faster.benchmark_before["latency_ms"] > faster.benchmark_after["latency_ms"]
    slower = sandbox.test(make_diff("speed.txt", "10\n", "20\n"), repeats=3)
    assert not slower.passed and slower.improved is False and "no significant improvement" in slower.errors[-1]


def test_limits_hold_without_namespaces(tiny_tree, tmp_path):
    """Where unshare is unavailable: timeout, memory, process and file-size limits still hold."""
    before = tree_digest(tiny_tree)
    sandbox = Sandbox(load_settings(tiny_tree), base_dir=str(tmp_path / "sbx"), isolate=False)
    assert not sandbox.network_isolated and not sandbox.use_overlay
    cases = {
        "hang": "import time\nwhile True:\n    time.sleep(0.1)\n",
        "memory": "blob = bytearray(10 * 1024 ** 3)\n",
        "fork": ("import os, time\nfor _ in range(100000):\n    try:\n        os.fork()\n"
                 "    except OSError:\n        time.sleep(0.01)\n"),
        "file": "with open('big.bin', 'wb') as fh:\n    for _ in range(1024):\n        fh.write(b'\\0' * (1 << 20))\n",
    }
    for name, code in cases.items():
        res = sandbox.test(make_diff("mod.py", MOD, code + "VALUE = 1\n"))
        assert not res.passed, name
        assert res.notes and "network not isolated" in res.notes[0]
        assert tree_digest(tiny_tree) == before
    deadline = time.monotonic() + 10
    while _stragglers(str(tmp_path / "sbx")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stragglers(str(tmp_path / "sbx")) == []
