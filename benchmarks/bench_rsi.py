"""RSI benchmarks.

* ``sandbox-cycle``: one sandbox test of a one-line diff on a generated tree of 1,000 files /
  10 MB: both trees copied, the original's tests (one pytest file, run once per tree state)
  and the candidate's, two interleaved benchmark pairs, every command in its own bwrap jail
  (``vortex``), or unjailed (``vortex-unjailed``, the path taken without bwrap), vs the naive
  peer a user would script (``shutil.copytree`` of both trees + ``git apply`` + the same
  commands, no isolation, no judge). ``extra_info`` has the sandbox's overhead beyond the
  commands' own time (goal <= 1 s), and beside it the start of a bare ``bwrap ... true`` and of
  the same jail as the sandbox's with ``true`` on the same machine (``jail-start``).
* ``propose-test-apply``: a whole ``rsi_cycle`` on a copy of the sample service (proposal,
  pytest, 5 interleaved benchmark pairs, journaled apply), vs the naive peer (copy, apply,
  pytest, one benchmark run each side, copy back).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import pytest

from vortex.config import RSIConfig
from vortex.monitor.weaknesses import Weakness, WeaknessType
from vortex.rsi import sandbox as sandbox_module
from vortex.rsi.diffs import make_diff
from vortex.rsi.engine import RSIEngine
from vortex.rsi.jail import Bind, Jail, probe_isolation
from vortex.rsi.sandbox import Sandbox
from vortex.rsi.settings import load_settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "examples", "sample_service")
BENCH_JSON = '{"t": {"value": 1.0, "better": "lower"}}'


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("big") / "tree"
    blob = ("x" * 79 + "\n") * 128  # 10 KiB
    for d in range(20):
        os.makedirs(root / f"pkg{d}")
        for f in range(50):
            (root / f"pkg{d}" / f"m{f}.py").write_text(f"# module {d}.{f}\n" + blob)
    (root / "conf.toml").write_text("# settings\nworkers = 4\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_conf.py").write_text("def test_conf():\n    assert True\n")
    (root / "bench.py").write_text(f"print({BENCH_JSON!r})\n")
    (root / "pyproject.toml").write_text(
        '[tool.vortex]\ntest_command = ["{python}", "-m", "pytest", "-q", "tests"]\n'
        'benchmark_command = ["{python}", "bench.py"]\njudge = ["tests", "bench.py"]\n'
        '[tool.vortex.benchmark]\nprimary = "t"\n')
    os.chmod(tmp_path_factory.getbasetemp(), 0o755)  # the jail's uid reads the tree
    return str(root)


def _own_command_time(root, n_tests, n_bench):
    """The commands' own time: the same pytest and benchmark runs, straight on the tree."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    for _ in range(n_tests):
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                       cwd=root, env=env, check=True, capture_output=True)
    for _ in range(n_bench):
        subprocess.run([sys.executable, "bench.py"], cwd=root, check=True, capture_output=True)
    return time.perf_counter() - t0


def _naive(root, diff, work, bench_runs):
    if os.path.exists(work):
        shutil.rmtree(work)
    shutil.copytree(root, work)
    base = work + "-base"
    if bench_runs and os.path.exists(base):
        shutil.rmtree(base)
    if bench_runs:
        shutil.copytree(root, base)
    with open(work + ".diff", "w") as fh:
        fh.write(diff)
    subprocess.run(["git", "apply", work + ".diff"], cwd=work, check=True)
    s = load_settings(root)
    ok = subprocess.run(s.expand(s.test_command), cwd=work, capture_output=True).returncode == 0
    outs = [subprocess.run(s.expand(s.benchmark_command), cwd=t, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([t, *filter(None, sys.path)])}).stdout
            for _ in range(bench_runs) for t in (base, work)]
    return ok, outs


@pytest.mark.parametrize("impl", ["vortex", "vortex-unjailed", "naive"])
def test_sandbox_cycle_1000_files(benchmark, big_tree, tmp_path, impl):
    benchmark.group = "sandbox-cycle (1,000 files / 10 MB)"
    settings = load_settings(big_tree)
    diff = make_diff("conf.toml", "# settings\nworkers = 4\n", "# settings\nworkers = 8\n")
    if impl.startswith("vortex"):
        sandbox = Sandbox(settings, base_dir=str(tmp_path / "sbx"), isolate=impl == "vortex")
        if impl == "vortex" and not sandbox.isolated:
            pytest.skip(f"no bwrap jail here: {sandbox.isolation.cause}")
        results = []

        def cycle():
            results.append(sandbox.test(diff, repeats=2))

        # every round a new tree state: the original's tests run too (6 jailed commands)
        benchmark.pedantic(cycle, rounds=3, iterations=1, setup=sandbox_module._BASELINES.clear)
        for res in results:
            assert not res.errored and res.tests_run == res.baseline_tests == 1
            assert res.benchmark_runs == 2 and res.benchmark_before == {"t": 1.0}
            assert res.improved is False  # identical runs: no gain
        best = min(results, key=lambda r: r.duration_secs)
        own = min(_own_command_time(big_tree, 2, 4) for _ in range(3))
        overhead = best.duration_secs - own
        benchmark.extra_info.update(sandbox_secs=best.duration_secs, setup_secs=best.setup_secs,
                                    commands_own_secs=own, overhead_secs=overhead,
                                    isolated=best.isolated)
        print(f"\n{impl} sandbox cycle (best of 3): {best.duration_secs:.3f} s, commands' own time "
              f"{own:.3f} s, overhead {overhead:.3f} s (trees copied in {best.setup_secs:.3f} s)")
    else:
        ok, outs = benchmark.pedantic(lambda: _naive(big_tree, diff, str(tmp_path / "w"), 2),
                                      rounds=3, iterations=1)
        assert ok and all(json.loads(o) == json.loads(BENCH_JSON) for o in outs)


@pytest.mark.parametrize("what", ["bare bwrap", "vortex jail"])
def test_jail_start(benchmark, what, tmp_path):
    """The price of one jailed command: bwrap alone (``--unshare-all`` + ``/usr``, as root), and
    the sandbox's jail (unprivileged uid, staging, the interpreter's prefixes, /proc scan)."""
    benchmark.group = "jail-start (true)"
    iso = probe_isolation()
    if not iso.isolated:
        pytest.skip(f"no bwrap jail here: {iso.cause}")
    if what == "bare bwrap":
        argv = [shutil.which("bwrap"), "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
                "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev", "/usr/bin/true"]
        run = lambda: subprocess.run(argv, check=True)  # noqa: E731
    else:
        jail = Jail(load_settings(SAMPLE).sandbox, iso)
        (tmp_path / "tree").mkdir(mode=0o755)
        bind = Bind(str(tmp_path / "tree"), "/vortex/tree")

        def run():
            assert jail.run(["/usr/bin/true"], binds=[bind], cwd=bind).ok
    benchmark.pedantic(run, rounds=20, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable (the test script's smoke run)
        benchmark.extra_info["median_secs"] = statistics.median(benchmark.stats.stats.data)


def _fresh_sample(tmp_path, i):
    dst = tmp_path / f"sample{i}"
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return str(dst)


@pytest.mark.parametrize("impl", ["vortex", "naive"])
def test_propose_test_apply_sample_service(benchmark, tmp_path, impl):
    benchmark.group = "propose-test-apply (sample service)"
    weakness = Weakness(WeaknessType.LATENCY_SPIKE, 0.5, "thorough mode slow", time.time(), 2.0, 1.0, 500)
    counter = iter(range(100))
    if impl == "vortex":
        def setup():
            i = next(counter)
            eng = RSIEngine(_fresh_sample(tmp_path, i), str(tmp_path / f"home{i}"),
                            RSIConfig(enabled=True, benchmark_repeats=5), sandbox_dir=str(tmp_path / "sbx"))
            return (eng,), {}

        res = benchmark.pedantic(lambda eng: eng.rsi_cycle([weakness]), setup=setup, rounds=2)
        assert res.applied == 1 and res.errors == []
        benchmark.extra_info.update(cycle_secs=res.duration_secs)
        print(f"\npropose -> test -> apply: {res.duration_secs:.2f} s")
    else:
        def naive_cycle(root):
            path = os.path.join(root, "sample_service", "tunables.toml")
            with open(path) as fh:
                old = fh.read()
            diff = make_diff("sample_service/tunables.toml", old, old.replace("ensemble_size = 32", "ensemble_size = 16"))
            work = root + "-work"
            ok, outs = _naive(root, diff, work, 1)
            assert ok
            shutil.copy(os.path.join(work, "sample_service", "tunables.toml"), path)
            return outs

        outs = benchmark.pedantic(naive_cycle, setup=lambda: ((_fresh_sample(tmp_path, next(counter)),), {}),
                                  rounds=2)
        assert len(outs) == 2 and all("cpu_ms" in json.loads(o) for o in outs)
