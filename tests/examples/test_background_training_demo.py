"""examples/background_training_demo.py runs end to end (--quick) and leaves a sane registry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vortex.training.registry import ModelRegistry

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "background_training_demo.py")


@pytest.mark.slow
def test_demo_quick(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, DEMO, "--quick", "--home", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "versions:" in out.stdout and "serving log:" in out.stdout
    assert out.stdout.rstrip().endswith("every stage reached")
    reg = ModelRegistry(tmp_path / "models")
    rows = reg.list_versions()
    assert len(rows) >= 2 and all(reg.verify(r["version"]) is None for r in rows)
    trained = [r for r in rows if r["val_accuracy"] is not None]
    assert max(r["val_accuracy"] for r in trained) > 0.8  # digits are learnable
    reasons = [e["reason"] for e in reg.serving_log()]
    assert any(r.startswith("auto: sample_threshold") for r in reasons)
    assert "demo: manual rollback" in reasons and reasons[-1] == "demo: roll forward"
    assert reg.active_version == max(r["version"] for r in trained if r["status"] != "rejected")
