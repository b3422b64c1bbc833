"""vortex.demo.stages: each stage's verdict from a run's evidence, including the ways it fails."""

from __future__ import annotations

import random

import pytest

from vortex.demo.checklist import Checklist, StageStatus
from vortex.demo.stages import STAGES, DemoEvidence, Served, loop_checklist

PATCH = {"id": "p1", "status": "applied", "description": "set views 1 -> 5",
         "moves": [{"name": "views", "old": 1, "new": 5, "direction": "increase"}],
         "history": [[0, "proposed", "created"], [1, "applied", "applied"]],
         "test_result": {"passed": True, "errored": False, "isolated": True,
                         "isolation": "jailed with bwrap", "tests_run": 5, "tests_passed": 4,
                         "metric": "error_rate", "performance_delta": 0.1,
                         "delta_interval": [0.05, 0.15], "confidence_level": 0.95, "errors": []}}
RUN = {"run_id": 2, "trigger": "rsi_triggered", "reason": "proposal p1: set views", "status": "swapped",
       "error": None, "train_samples": 900, "holdout_samples": 300, "timings": {"total": 3.0},
       "version": 3, "validated_against": 2, "swapped": True,
       "validation": {"candidate_accuracy": 0.9, "active_accuracy": 0.8, "n": 300,
                      "improvement_pct": 12.0, "ci_low": 5.0, "ci_high": 20.0, "confidence_level": 0.95}}


def _served(segments):
    """Requests from (count, accuracy, nll, version, tunables, drifted) segments."""
    rng = random.Random(0)
    out = []
    for count, acc, nll, version, tunables, drifted in segments:
        for _ in range(count):
            out.append(Served(len(out) + 1, rng.random() < acc, nll + rng.uniform(-0.1, 0.1),
                              version, tunables, drifted))
    return out


def _evidence(**changes):
    base = dict(
        drift_started=300,
        served=_served([(300, 0.97, 0.1, 1, 0, False), (400, 0.45, 1.5, 1, 0, True),
                        (400, 0.6, 1.0, 1, 1, True), (300, 0.9, 0.3, 3, 1, True)]),
        weaknesses=[{"request": 320, "weaknesses": [
            {"type": "prediction_error_spike", "metric_value": 0.6, "baseline_value": 0.35}]}],
        proposals=[PATCH], runs=[RUN], swaps=[(1100, 3, 2)],
        tunables=[{"views": 1}, {"views": 5}])
    base.update(changes)
    return DemoEvidence(**base)


def _stages(c: Checklist):
    return {s.name: s for s in c.stages}


def test_a_complete_run_reaches_every_stage_with_its_figures():
    c = loop_checklist(_evidence())
    assert [s.name for s in c.stages] == list(STAGES) and c.complete and c.exit_status == 0
    s = _stages(c)
    assert "prediction_error_spike 0.600 vs threshold 0.350" in s["weakness detected"].text
    assert "tests: 4 passed, 1 skipped, 0 failed" in s["proposal tested in isolation"].text
    assert s["patch applied"].facts["request"] == 701  # the first request served with views 5
    effect = s["patch's effect on served requests"].facts
    assert effect["metric"] == "error_rate" and effect["verdict"] == "better"
    assert (effect["requests_before"], effect["requests_after"]) == (400, 400)  # version 1 only
    assert effect["nll"]["change"] == pytest.approx(-0.5, abs=0.05)
    assert "run 2" in s["training run (triggered by the patch)"].text
    assert "+12.0% [+5.0, +20.0]" in s["candidate validated"].text
    assert s["accuracy recovered"].facts["regained"] > 0.5
    assert c.render().splitlines()[-1] == "every stage reached"


def test_a_judge_that_cannot_start_is_an_errored_stage_with_its_cause():
    errored = {**PATCH, "status": "errored", "history": [[0, "proposed", "created"]],
               "test_result": {**PATCH["test_result"], "passed": False, "errored": True,
                               "errors": ["runner: No module named 'pytest'"]}}
    c = loop_checklist(_evidence(proposals=[errored], runs=[], swaps=[], tunables=[{"views": 1}]))
    s = _stages(c)
    assert s["proposal tested in isolation"].status is StageStatus.ERRORED
    assert "No module named 'pytest'" in s["proposal tested in isolation"].text
    assert s["patch applied"].status is StageStatus.NOT_REACHED and c.exit_status == 1
    assert "[!] proposal tested in isolation" in c.render()


def test_a_test_without_isolation_is_errored():
    open_ = {**PATCH, "test_result": {**PATCH["test_result"], "isolated": False,
                                      "isolation": "NOT isolated: bwrap is not installed"}}
    s = _stages(loop_checklist(_evidence(proposals=[open_])))
    assert s["proposal tested in isolation"].status is StageStatus.ERRORED
    assert "bwrap is not installed" in s["proposal tested in isolation"].text


def test_a_swap_right_after_the_patch_leaves_its_effect_unmeasured():
    served = _served([(300, 0.97, 0.1, 1, 0, False), (400, 0.45, 1.5, 1, 0, True),
                      (10, 0.6, 1.0, 1, 1, True), (500, 0.9, 0.3, 3, 1, True)])
    s = _stages(loop_checklist(_evidence(served=served)))
    effect = s["patch's effect on served requests"]
    assert effect.status is StageStatus.NOT_REACHED and "400 drifted requests before" in effect.text
    assert "10 with it" in effect.text


def test_no_better_candidate_means_no_swap_and_no_recovery():
    rejected = {**RUN, "status": "rejected", "swapped": False, "version": 3}
    served = _served([(300, 0.97, 0.1, 1, 0, False), (400, 0.45, 1.5, 1, 0, True),
                      (400, 0.5, 1.0, 1, 1, True)])
    c = loop_checklist(_evidence(served=served, runs=[rejected], swaps=[]))
    s = _stages(c)
    assert s["candidate validated"].status is StageStatus.REACHED and "rejected" in s["candidate validated"].text
    assert s["better version swapped in"].status is StageStatus.NOT_REACHED
    assert "no candidate beat the served model" in s["better version swapped in"].text
    assert s["accuracy recovered"].status is StageStatus.NOT_REACHED and c.exit_status == 1


def test_no_weakness_after_the_drift_is_not_reached():
    c = loop_checklist(_evidence(weaknesses=[{"request": 10, "weaknesses": []}]))
    assert _stages(c)["weakness detected"].status is StageStatus.NOT_REACHED
