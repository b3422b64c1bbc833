"""The wheel, built from this tree and installed into a fresh environment, imports and works."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_environment_and_passes_a_smoke_test(tmp_path):
    if not (ROOT / "pyproject.toml").exists() or shutil.which("git") is None:
        pytest.skip("needs the source tree")
    pytest.importorskip("scikit_build_core")
    wheels = tmp_path / "wheels"
    # A clean copy of the tracked sources, so nothing built in place leaks into the wheel.
    tree = tmp_path / "tree"
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"],
                           check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.endswith(".so"):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, tree / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(tree)], check=True)
    (wheel,) = wheels.glob("vortex-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    typing_files = {f"vortex/{p.name}" for p in (ROOT / "src" / "vortex").glob("*.pyi")} | {"vortex/py.typed"}
    assert "vortex/_core.pyi" in typing_files and typing_files <= names, sorted(typing_files - names)

    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The fresh environment sees the dependencies (numpy, torch...) of this one through a .pth
    # file placed after its own site-packages, so its own copy of vortex is the one imported.
    deps = sysconfig.get_path("purelib")
    Path(site, "zz_deps.pth").write_text(deps + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site,
                    str(wheel)], check=True)
    smoke = textwrap.dedent("""
        import vortex, vortex._core
        assert vortex._core.__file__.startswith(SITE), vortex._core.__file__
        from vortex.cli import main
        assert main(["--version"]) == 0
        import numpy as np
        det = vortex.RuntimeDetector(vortex.RuntimeDetectorConfig(latency_spike_threshold_ms=300))
        for ms in [200.0] * 15 + [800.0] * 5:
            det.record_sample(ms, 0.9)
        assert [w.type.value for w in det.analyze()] == ["latency_spike"]
        buf = vortex.SampleBuffer(4, capacity=8)
        assert buf.push(np.ones(4, np.float32), 1) == 0 and len(buf.snapshot()) == 1
        w = vortex.FluxDynamics().compute(buf.snapshot()).weights
        assert w.shape == (1,)
    """).replace("SITE", repr(site))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", smoke], check=True, capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert "vortex" in out.stdout
