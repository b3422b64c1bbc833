"""The whole loop on the digits data, through the `vortex demo` command (its quick mode)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_vortex_demo_detects_patches_retrains_and_recovers(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    proc = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "demo", "--quick", "--home", str(home),
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    kinds = [e["kind"] for e in report["timeline"]]
    # the detector saw the drift
    weaknesses = [e for e in report["timeline"] if e["kind"] == "weakness"]
    assert weaknesses and weaknesses[0]["request"] >= report["drift_started_at_request"]
    # the RSI engine tested and applied a patch of the service's tunables
    assert report["proposals_applied_at_requests"], kinds
    # the applied patch triggered a training run with its reason
    rsi_runs = [e for e in report["timeline"] if e["kind"] == "training"
                and e.get("trigger") == "rsi_triggered"]
    assert rsi_runs and "proposal" in rsi_runs[0]["text"]
    # a better model was swapped in and accuracy recovered
    assert report["swaps_at_requests"]
    acc = report["accuracy"]
    assert acc["clean"] > 0.9
    assert acc["drift_before_fixes"] < acc["clean"] - 0.2
    assert acc["after_last_swap"] > acc["drift_before_fixes"] + 0.2
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy: clean" in proc.stdout

    # The state survives the process: `vortex status` reads it back from disk.
    status = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "status", "--home", str(home),
                             "--json"], capture_output=True, text=True, check=True)
    s = json.loads(status.stdout)
    assert s["models"]["versions"] >= 2 and s["models"]["active_version"] >= 2
    # applied, unless the post-apply watch saw a regression and rolled it back (load-dependent)
    assert s["proposals"].get("applied", 0) + s["proposals"].get("rolled_back", 0) >= 1
    tunables = (home / "service" / "digits_service" / "tunables.toml").read_text()
    changed = "views = 1 " not in tunables or "temperature = 1.0 " not in tunables
    assert changed == (s["proposals"].get("applied", 0) >= 1)
    assert s["audit"]["ok"] and s["audit"]["entries"] > 0
    assert s["buffered_samples"] > 0
    assert s["training"]["runs"] >= 1


def test_status_of_a_missing_home_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "status", "--home",
                           str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "no Vortex home at" in proc.stderr and "nope" in proc.stderr
