"""The whole loop on the digits data, through the `vortex demo` command (its quick mode), run
as a newcomer would: from a directory, with a relative --home, then the commands it prints."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from vortex.demo.stages import STAGES


def _vortex(*argv, cwd, timeout=600):
    return subprocess.run([sys.executable, "-P", "-m", "vortex.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def _printed_commands(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = lines.index("inspect the result:") + 1
    return [shlex.split(line) for line in lines[start:] if line.startswith("  vortex ")]


@pytest.mark.slow
def test_vortex_demo_reaches_every_stage_and_its_printed_commands_work(tmp_path):
    proc = _vortex("demo", "--quick", "--home", "demo/.vortex", "--out", "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    checklist = report["checklist"]
    assert checklist["complete"] and [s["name"] for s in checklist["stages"]] == list(STAGES)
    assert all(s["status"] == "reached" for s in checklist["stages"]), report["checklist_text"]
    stage = {s["name"]: s["facts"] for s in checklist["stages"]}
    # each stage with its measured figure
    weakness = stage["weakness detected"]
    assert weakness["request"] >= report["drift_started_at_request"]
    assert all(w["metric_value"] > w["baseline_value"] or w["type"].startswith("confidence")
               for w in weakness["weaknesses"])
    tested = stage["proposal tested in isolation"]
    assert tested["isolated"] is True and tested["tests_passed"] >= 1 and tested["interval"]
    assert stage["patch applied"]["moves"] and stage["patch applied"]["request"] > 0
    effect = stage["patch's effect on served requests"]
    assert min(effect["requests_before"], effect["requests_after"]) >= 30
    for metric in ("nll", "error_rate"):
        f = effect[metric]
        assert f["after"] - f["before"] == pytest.approx(f["change"])
        assert f["interval"][0] <= f["change"] <= f["interval"][1]
    assert effect["metric"] == tested["metric"] and effect["verdict"] in ("better", "worse", "no clear change")
    validated = stage["candidate validated"]["validation"]
    assert 0 <= validated["active_accuracy"] <= 1 and validated["ci_low"] <= validated["ci_high"]
    assert stage["better version swapped in"]["swaps"]
    acc = stage["accuracy recovered"]
    assert acc["clean"] > 0.9 and acc["drifted_before_fixes"] < acc["clean"] - 0.2
    assert acc["after_last_swap"] > acc["drifted_before_fixes"] + 0.2
    assert "every stage reached" in proc.stdout and "[ ]" not in proc.stdout
    assert (tmp_path / "demo" / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # what it prints to inspect the result works as printed, from the same directory
    commands = _printed_commands(proc.stdout)
    assert [c[:3] for c in commands] == [["vortex", "status", "--home"],
                                         ["vortex", "proposals", "list"], ["vortex", "models", "list"]]
    for argv in commands:
        ran = _vortex(*argv[1:], cwd=tmp_path, timeout=120)
        assert ran.returncode == 0, (argv, ran.stdout, ran.stderr)
        assert ran.stdout.strip() and not ran.stderr.strip(), argv
    status = json.loads(_vortex(*commands[0][1:], "--json", cwd=tmp_path).stdout)
    assert status["models"]["versions"] >= 2 and status["models"]["active_version"] >= 2
    assert status["proposals"].get("applied", 0) + status["proposals"].get("rolled_back", 0) >= 1
    assert status["audit"]["ok"] and status["buffered_samples"] > 0 and status["training"]["runs"] >= 1
    assert status["degraded"]["fallbacks"] == []  # bwrap and /proc: nothing degraded here


@pytest.mark.slow
def test_a_demo_whose_judge_cannot_start_says_so_and_fails(tmp_path):
    """The demo's environment lacking pytest (a bare venv's interpreter as the judge's): the
    proposal is errored with the runner's own words, the demo stops and exits non-zero."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    proc = _vortex("demo", "--quick", "--home", "demo/.vortex", "--out", "demo",
                   "--judge-python", str(venv / "bin" / "python"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    stage = {s["name"]: s for s in report["checklist"]["stages"]}
    tested = stage["proposal tested in isolation"]
    assert tested["status"] == "errored" and "No module named 'pytest'" in tested["text"]
    assert stage["patch applied"]["status"] == "not_reached"
    assert "[!] proposal tested in isolation" in proc.stdout and "ERRORED" in proc.stdout
    assert not report["checklist"]["complete"]


def test_status_of_a_missing_home_is_a_clear_error(tmp_path):
    proc = _vortex("status", "--home", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode != 0
    assert "no Vortex home at" in proc.stderr and "nope" in proc.stderr
