import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_detects_every_scenario():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "runtime_detector_demo.py"),
                          "--quick"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for kind in ("latency_spike", "recurring_pattern", "confidence_drop", "confidence_low",
                 "prediction_error_spike", "throughput_drop", "memory_pressure"):
        assert f"+ {kind}" in text, kind
    assert ">> RSI trigger #1: latency_spike" in text
    assert "vortex_detector_samples_total" in text and "sacred positions (3, 6, 9)" in text
    assert text.rstrip().endswith("every stage reached")
