"""The dashboard of a fleet's home, whose model registry is on shared storage
(``ServiceSpec.registry_url``): ``vortex dashboard --registry s3://... --storage-options JSON``
shows that registry and swaps on it, as another machine sees it, and audits the swap in the
home. moto's S3 server on loopback stands for the shared storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="s3fs (test extra) is needed to reach the S3 server")
pytest.importorskip("moto.server", reason="moto[server] (test extra) provides the S3 server")

from dashboard_support import http  # noqa: E402
from s3_support import S3_ENV, s3, s3_server  # noqa: E402, F401  (the fixtures)
from safetensors.numpy import save  # noqa: E402

from vortex.rsi.audit import AuditLog  # noqa: E402
from vortex.training.registry import ModelRegistry  # noqa: E402

TOKEN = "a-token-for-the-fleet"


def _dashboard(home, *argv):
    return subprocess.Popen([sys.executable, "-P", "-m", "vortex.cli", "dashboard", "--home", str(home),
                             "--port", "0", "--token", TOKEN, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **S3_ENV})


def test_the_dashboard_shows_and_swaps_the_fleets_shared_registry(s3, tmp_path):
    url, options, _ = s3
    trainer = ModelRegistry(url, storage_options=options)  # the control plane, elsewhere
    v1 = trainer.register(save({"w": np.zeros(4, np.float32)}), {"val_accuracy": 0.5})
    v2 = trainer.register(save({"w": np.ones(4, np.float32)}), {"parent": v1, "val_accuracy": 0.9})
    trainer.set_active(v1, "first")
    trainer.set_active(v2, "trained")
    home = tmp_path / "home"
    home.mkdir()
    with _dashboard(home, "--registry", url, "--storage-options", json.dumps(options)) as proc:
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
            base = lines[1].split("open ", 1)[1].split("#")[0]
            status, state = http("GET", base + "api/state")
            assert status == 200 and not state["problems"], state["problems"]
            assert state["models"]["active_version"] == v2
            assert [v["version"] for v in state["models"]["versions"]] == [v1, v2]
            got, body = http("POST", base + "api/models/rollback", {"by": "ops", "expect_active": v2},
                             {"X-Vortex-Token": TOKEN})
            assert got == 200, body
            # another machine's client sees the rollback on the bucket
            assert ModelRegistry(url, storage_options=options).active_version == v1
            # a stale view is refused, and nothing changes
            got, body = http("POST", base + f"api/models/{v2}/swap", {"by": "ops", "expect_active": v2},
                             {"X-Vortex-Token": TOKEN})
            assert got == 409 and ModelRegistry(url, storage_options=options).active_version == v1, body
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
    events = AuditLog(home / "rsi" / "audit.jsonl", home / "rsi" / "audit.head").entries()
    assert [(e["event"], e["data"]["to_version"], e["data"]["by"]) for e in events] == [("model_swapped", v1, "ops")]
    assert not (home / "models").exists()  # nothing of the registry on the home


def test_a_missing_shared_registry_is_refused_in_one_line(s3, tmp_path):
    url, options, _ = s3
    missing = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "dashboard", "--home", str(tmp_path),
                              "--registry", url + "-nothing-here", "--storage-options", json.dumps(options)],
                             check=False, capture_output=True, text=True, timeout=60, env={**os.environ, **S3_ENV})
    assert missing.returncode == 1 and f"no model registry at '{url}-nothing-here'" in missing.stderr, missing.stderr
    bad = subprocess.run([sys.executable, "-P", "-m", "vortex.cli", "dashboard", "--home", str(tmp_path),
                          "--registry", url, "--storage-options", "[1]"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be a JSON object" in bad.stderr, bad.stderr
