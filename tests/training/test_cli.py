"""``vortex models``: pin/unpin and verify, run as a user would (a process, its exit status)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from vortex.home import HomeLayout
from vortex.rsi.audit import AuditLog
from vortex.training.registry import ModelRegistry


def _vortex(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "vortex.cli", *argv], capture_output=True,
                          text=True, timeout=120)


def _registry(home) -> ModelRegistry:
    reg = ModelRegistry(home / "models")
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        reg.register({"w": torch.randn(4, 3, generator=g)}, {"trigger": "manual"})
    reg.set_active(3, "test")
    return reg


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_pin_and_unpin_survive_cleanup_and_show_in_list(tmp_path):
    home = tmp_path / "home"
    reg = _registry(home)
    out = _vortex("models", "--home", str(home), "pin", "1")
    assert out.returncode == 0 and "version 1 pinned" in out.stdout, out.stderr
    listed = _vortex("models", "--home", str(home), "--json", "list")
    assert {v["version"]: v["pinned"] for v in json.loads(listed.stdout)["versions"]} == {
        1: True, 2: False, 3: False}
    table = _vortex("models", "--home", str(home), "list").stdout.splitlines()
    assert "pinned" in table[0].split() and table[1].split()[:3] == ["1", "candidate", "yes"]
    assert _vortex("models", "--home", str(home), "--json", "cleanup", "--keep", "0").returncode == 0
    assert ModelRegistry(home / "models").versions() == [1, 3]  # pinned 1 and active 3 stay
    out = _vortex("models", "--home", str(home), "unpin", "1")
    assert out.returncode == 0 and ModelRegistry(home / "models").pinned() == []
    missing = _vortex("models", "--home", str(home), "pin", "9")
    assert missing.returncode == 1 and "9" in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert reg.versions() == [1, 3]


def test_verify_lists_every_damaged_file(tmp_path):
    home = tmp_path / "home"
    reg = _registry(home)
    assert _vortex("models", "--home", str(home), "verify").stdout.splitlines() == [
        "version 1: ok", "version 2: ok", "version 3: ok"]
    # two versions' weights damaged: both named, the sound one still reported ok
    for v in (1, 3):
        _flip(home / "models" / os.path.basename(reg.weights_path(v)), -5)
    out = _vortex("models", "--home", str(home), "verify")
    assert out.returncode == 1
    assert out.stdout.splitlines()[:3] == ["version 1: damaged", "version 2: ok", "version 3: damaged"]
    assert sum(line.startswith("DAMAGED ") for line in out.stdout.splitlines()) == 2
    assert len(out.stderr.splitlines()) == 1 and "2 damaged file(s)" in out.stderr
    # the metadata table and the serving log damaged at once: both named, nothing raised
    _flip(home / "models" / "versions.arrow", 100)
    _flip(home / "models" / "serving_log.jsonl", 20)
    out = _vortex("models", "--home", str(home), "--json", "verify")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    report = json.loads(out.stdout)
    assert not report["ok"] and report["versions"] == {}
    assert {os.path.basename(p["path"]) for p in report["problems"]} == {
        "versions.arrow", "serving_log.jsonl"}
    assert all(p["remedy"] for p in report["problems"])


def test_operator_changes_are_audited_and_a_swap_is_compare_and_swap(tmp_path):
    home = tmp_path / "home"
    _registry(home)
    assert _vortex("models", "--home", str(home), "swap", "1", "--reason", "bad release").returncode == 0
    assert _vortex("models", "--home", str(home), "pin", "1").returncode == 0
    assert _vortex("models", "--home", str(home), "cleanup", "--keep", "0").returncode == 0
    layout = HomeLayout(home)
    log = AuditLog(layout.audit, layout.audit_head)
    assert log.verify().ok
    entries = log.entries()
    assert [(e["event"], {k: v for k, v in e["data"].items() if k != "by"}) for e in entries] == [
        ("model_swapped", {"from_version": 3, "to_version": 1, "reason": "bad release"}),
        ("model_pinned", {"version": 1}),
        # the active 1 is pinned and 3 is the rollback target: only 2 goes
        ("models_removed", {"versions": [2], "keep": 0, "max_age_days": None}),
    ]
    assert all(e["data"]["by"].startswith("cli:") for e in entries)
    # a registry named on its own belongs to no home: changed, nothing audited anywhere
    out = _vortex("models", "--registry", str(home / "models"), "swap", "3")
    assert out.returncode == 0 and len(log.entries()) == 3
    assert ModelRegistry(home / "models").active_version == 3
