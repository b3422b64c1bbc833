import importlib.metadata
import os
import subprocess
import sys

import pytest

import vortex


def test_import_is_light():
    code = ("import sys, vortex; heavy = [m for m in ('torch', 'numba', 'pyarrow', 'numpy') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_command():
    out = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith(f"vortex {vortex.__version__} (compiled core {vortex.__version__}")


def test_console_script_installed():
    try:
        importlib.metadata.version("vortex")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("running from a source tree without pip install (scripts/dev_build.sh)")
    exe = os.path.join(os.path.dirname(sys.executable), "vortex")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert "vortex" in out.stdout


def test_lazy_names_resolve():
    assert vortex.WeaknessType.LATENCY_SPIKE.value == "latency_spike"
    assert "WeaknessType" in dir(vortex)
