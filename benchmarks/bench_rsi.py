"""RSI benchmarks.

* ``sandbox-cycle``: one sandbox test of a one-line diff on a generated tree of 1,000 files /
  10 MB (test command + two interleaved benchmark pairs), with the overlay file system and with
  the copying fallback, vs the naive peer a user would script (``shutil.copytree`` of both trees
  + ``git apply`` + the same commands, no isolation). ``extra_info`` has
  the sandbox's overhead beyond the commands' own time (goal <= 1 s).
* ``propose-test-apply``: a whole ``rsi_cycle`` on a copy of the sample service (proposal,
  pytest, 5 interleaved benchmark pairs, journaled apply), vs the naive peer (copy, apply,
  pytest, one benchmark run each side, copy back).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from vortex.config import RSIConfig
from vortex.monitor.weaknesses import Weakness, WeaknessType
from vortex.rsi.diffs import make_diff
from vortex.rsi.engine import RSIEngine
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
    (root / "pyproject.toml").write_text(
        '[tool.vortex]\ntest_command = ["/bin/true"]\n'
        f'benchmark_command = ["/bin/echo", {json.dumps(BENCH_JSON)}]\n'
        '[tool.vortex.benchmark]\nprimary = "t"\n')
    return str(root)


def _own_command_time(settings, n_bench):
    t0 = time.perf_counter()
    subprocess.run(settings.expand(settings.test_command), check=True)
    for _ in range(n_bench):
        subprocess.run(settings.expand(settings.benchmark_command), check=True, capture_output=True)
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


@pytest.mark.parametrize("impl", ["vortex", "vortex-copy", "naive"])
def test_sandbox_cycle_1000_files(benchmark, big_tree, tmp_path, impl):
    benchmark.group = "sandbox-cycle (1,000 files / 10 MB)"
    settings = load_settings(big_tree)
    diff = make_diff("conf.toml", "# settings\nworkers = 4\n", "# settings\nworkers = 8\n")
    if impl.startswith("vortex"):
        sandbox = Sandbox(settings, base_dir=str(tmp_path / "sbx"))
        if impl == "vortex-copy":
            sandbox.use_overlay = False  # the fallback where overlays cannot be mounted
        res = benchmark.pedantic(lambda: sandbox.test(diff, repeats=2), rounds=3, iterations=1)
        assert res.tests_run == 0 and res.benchmark_runs == 2 and res.benchmark_before == {"t": 1.0}
        assert res.performance_delta == 0.0 and res.improved is False  # identical runs: no gain
        own = min(_own_command_time(settings, 4) for _ in range(3))
        overhead = res.duration_secs - own
        benchmark.extra_info.update(sandbox_secs=res.duration_secs, setup_secs=res.setup_secs,
                                    commands_own_secs=own, overhead_secs=overhead,
                                    network_isolated=res.network_isolated)
        print(f"\n{impl} sandbox cycle: {res.duration_secs:.3f} s, commands' own time {own:.3f} s, "
              f"overhead {overhead:.3f} s (setup/copy {res.setup_secs:.3f} s)")
    else:
        ok, outs = benchmark.pedantic(lambda: _naive(big_tree, diff, str(tmp_path / "w"), 2),
                                      rounds=3, iterations=1)
        assert ok and all(json.loads(o) == json.loads(BENCH_JSON) for o in outs)


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
