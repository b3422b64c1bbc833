"""Fallbacks are never silent: a service in an environment without /proc or without bubblewrap
says so once in its log, in ``system_status().degraded`` and in ``vortex status``.

Each scenario runs in a child process (the fallbacks are per process) whose environment really
lacks the thing: ``/proc`` hidden by a tmpfs in a bubblewrap mount namespace, ``bwrap`` absent
from ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from rsi_support import TINY_PYPROJECT

SERVICE = textwrap.dedent("""
    import json, logging, sys
    import numpy as np
    from vortex import Orchestrator, RuntimeDetectorConfig
    from vortex.training.models import mlp

    logging.basicConfig(level=logging.WARNING, format="LOG %(levelname)s %(name)s: %(message)s")
    home, tree = sys.argv[1], sys.argv[2]
    o = Orchestrator(mlp(4, 8, 3), None, home, feature_dim=4).with_runtime_detector(
        RuntimeDetectorConfig(memory_pressure_threshold=1e-9))  # any real figure is pressure
    if tree != "-":
        o.with_self_modification(tree)
    for i in range(40):
        o.infer(np.full(4, i, np.float32))
    kinds = [w.type.value for _ in range(3) for w in o.detector.analyze()]
    status = o.system_status()
    print("RESULT " + json.dumps({"kinds": kinds, "degraded": status.degraded,
                                  "memory_fraction": status.runtime["memory_fraction"]}))
    o.close()
""")


def _run(args, env=None):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(result[len("RESULT "):]), proc.stderr


def _status(home):
    proc = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "status", "--home", str(home)],
                          capture_output=True, text=True, timeout=60)
    js = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "status", "--home", str(home), "--json"],
                        capture_output=True, text=True, timeout=60)
    assert proc.returncode == js.returncode == 0, proc.stderr + js.stderr
    return proc.stdout, json.loads(js.stdout)["degraded"]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bwrap to hide /proc from a process")
def test_without_proc_memory_pressure_is_off_and_said_once(tmp_path):
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    home = tmp_path / "home"
    # the whole file system as it is, but an empty /proc
    result, log = _run(["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/proc",
                        sys.executable, str(script), str(home), "-"], env=_env())
    # peak RSS never falls: a pressure raised on it could never clear, so none is raised
    assert "memory_pressure" not in result["kinds"] and result["memory_fraction"] is None
    [entry] = result["degraded"]
    assert entry["component"] == "memory probe" and "memory-pressure detection off" in entry["fallback"]
    assert "/proc/self/statm" in entry["cause"]
    warnings = [line for line in log.splitlines() if line.startswith("LOG WARNING vortex.degraded")]
    assert len(warnings) == 1 and "memory probe" in warnings[0]  # once, though probed 5 times
    text, recorded = _status(home)
    assert "degraded (recorded by process" in text and "no longer running" in text
    assert "memory probe: memory-pressure detection off" in text
    assert recorded["fallbacks"] == result["degraded"] and recorded["process_running"] is False


def test_without_bwrap_the_unjailed_sandbox_is_said_once(tmp_path):
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    tree = tmp_path / "tree"
    (tree / "tests").mkdir(parents=True)
    (tree / "pyproject.toml").write_text(TINY_PYPROJECT)
    (tree / "conf.toml").write_text("workers = 4\nstrict = true\n")
    bin_dir = tmp_path / "bin"  # python and git, but no bwrap
    bin_dir.mkdir()
    os.symlink(shutil.which("git"), bin_dir / "git")
    home = tmp_path / "home"
    result, log = _run([sys.executable, str(script), str(home), str(tree)],
                       env=dict(_env(), PATH=str(bin_dir)))
    sandbox = [d for d in result["degraded"] if d["component"] == "rsi sandbox"]
    assert len(sandbox) == 1 and "tested unjailed" in sandbox[0]["fallback"]
    assert "not installed" in sandbox[0]["cause"]
    assert sum("LOG WARNING vortex.degraded: rsi sandbox" in line for line in log.splitlines()) == 1
    text, recorded = _status(home)
    assert "rsi sandbox: candidate patches tested unjailed" in text
    assert [d["component"] for d in recorded["fallbacks"]] == [d["component"] for d in result["degraded"]]


def test_a_service_with_nothing_missing_records_none(tmp_path):
    script = tmp_path / "service.py"
    script.write_text(SERVICE.replace("memory_pressure_threshold=1e-9", "memory_pressure_threshold=0.999"))
    home = tmp_path / "home"
    result, _ = _run([sys.executable, str(script), str(home), "-"], env=_env())
    assert result["degraded"] == [] and 0 < result["memory_fraction"] < 1
    text, recorded = _status(home)
    assert "degraded: none (recorded by process" in text and recorded["fallbacks"] == []


def test_a_damaged_record_is_named(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "degraded.json").write_text('{"pid": "x"}')
    proc = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "status", "--home", str(home)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "degraded.json" in proc.stderr and "delete it" in proc.stderr
