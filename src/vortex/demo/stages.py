"""What a ``vortex demo`` run shows, stage by stage, measured from what it served.

:func:`loop_checklist` turns the run's evidence (every served request with its outcome, the
weaknesses raised, the proposals and their sandbox tests, the training runs and swaps) into a
:class:`~vortex.demo.checklist.Checklist` of the loop's eight stages. A patch's effect is
measured on the served requests themselves: the drifted requests the same model version
answered with the tunables before the patch against those it answered with the patch, so
that a model swap does not pass for the patch's doing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .checklist import Checklist

__all__ = ["MIN_EFFECT_REQUESTS", "STAGES", "DemoEvidence", "Served", "loop_checklist"]

STAGES = ("weakness detected", "proposal tested in isolation", "patch applied",
          "patch's effect on served requests", "training run (triggered by the patch)",
          "candidate validated", "better version swapped in", "accuracy recovered")
"""The stages, in the order of the loop."""

MIN_EFFECT_REQUESTS = 30
"""Requests needed on each side of a patch (same model version) to measure its effect."""


@dataclass(frozen=True)
class Served:
    """One served request: its number (1-based), whether the answer was right, the negative
    log-likelihood of the true label, the model version and tunables generation (0 before the
    first patch took effect) that answered it, and whether its input was drifted.
    """

    request: int
    correct: bool
    nll: float
    version: int
    tunables: int
    drifted: bool


@dataclass
class DemoEvidence:
    """Everything a run leaves to judge it by.

    ``weaknesses``: the trigger events (``request``, ``weaknesses``: their ``to_dict()``);
    ``proposals``: ``ImprovementProposal.to_dict()`` of each; ``runs``: ``TrainingRun.to_dict()``
    of each; ``swaps``: ``(request, version, run_id)`` of every swap seen; ``tunables``: the
    values of each tunables generation.
    """

    drift_started: int
    served: list[Served]
    weaknesses: list[dict[str, Any]] = field(default_factory=list)
    proposals: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    swaps: list[tuple[int, int, int]] = field(default_factory=list)
    tunables: list[dict[str, Any]] = field(default_factory=list)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _diff_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``b`` minus mean of ``a``, with a normal-approximation 95% interval."""
    ma, mb = _mean(a), _mean(b)
    va = sum((x - ma) ** 2 for x in a) / max(1, len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / max(1, len(b) - 1)
    half = 1.96 * math.sqrt(va / len(a) + vb / len(b))
    return mb - ma, mb - ma - half, mb - ma + half


def _weakness(ev: DemoEvidence, c: Checklist) -> None:
    name = STAGES[0]
    first = next((e for e in ev.weaknesses if e["request"] >= ev.drift_started), None)
    if first is None:
        c.not_reached(name, f"no weakness raised in {len(ev.served) - ev.drift_started} drifted requests")
        return
    # a drop compares the recent figure with the window's baseline, the others with a threshold
    parts = [f"{w['type']} {w['metric_value']:.3f} vs "
             f"{'baseline' if w['type'].endswith('_drop') else 'threshold'} {w['baseline_value']:.3f}"
             for w in first["weaknesses"]]
    c.reached(name, "; ".join(parts) + f", at request {first['request']} "
              f"({first['request'] - ev.drift_started} after the drift began)",
              request=first["request"], weaknesses=first["weaknesses"])


def _tested(p: dict[str, Any]) -> bool:
    return p.get("test_result") is not None


def _applied(p: dict[str, Any]) -> bool:
    return any(h[1] == "applied" for h in p.get("history", []))


def _proposal_tested(ev: DemoEvidence, c: Checklist) -> dict[str, Any] | None:
    name = STAGES[1]
    tested = [p for p in ev.proposals if _tested(p)]
    p = next((p for p in tested if _applied(p)), tested[0] if tested else None)
    if p is None:
        c.not_reached(name, "no proposal was tested" if ev.proposals else "no proposal was made")
        return None
    tr = p["test_result"]
    facts = {"proposal": p["id"], "tests_run": tr["tests_run"], "tests_passed": tr["tests_passed"],
             "metric": tr["metric"], "delta": tr["performance_delta"],
             "interval": tr["delta_interval"], "isolated": tr["isolated"],
             "isolation": tr["isolation"]}
    if tr.get("errored"):
        c.errored(name, f"the sandbox could not judge {p['id']}: "
                  f"{(tr.get('errors') or ['no cause recorded'])[-1]}", **facts)
        return p
    if not tr["isolated"]:
        c.errored(name, f"{p['id']} was tested without isolation ({tr['isolation']}); "
                  "install bubblewrap", **facts)
        return p
    if not tr["passed"]:
        c.not_reached(name, f"{p['id']} failed its test: " + "; ".join(tr.get("errors") or []),
                      **facts)
        return p
    interval = tr["delta_interval"]
    bench = (f"benchmark {tr['metric']} {tr['performance_delta']:+.1%} better "
             f"[{interval[0]:+.1%}, {interval[1]:+.1%}] at {tr['confidence_level']:.0%}"
             if interval else "no benchmark verdict")
    c.reached(name, f"{p['id']}: {tests_phrase(tr)}, {bench}, "
              f"isolated: yes ({tr['isolation']})", **facts)
    return p


def _patch_applied(ev: DemoEvidence, c: Checklist, p: dict[str, Any] | None) -> int | None:
    """The tunables generation the applied patch started (None if none was applied)."""
    name = STAGES[2]
    if p is None:
        c.not_reached(name, "nothing passed a sandbox test")
        return None
    if not _applied(p):
        tested = p.get("test_result") or {}
        why = (f"the sandbox could not judge {p['id']}" if tested.get("errored") else
               "nothing passed a sandbox test" if not tested.get("passed") else
               f"{p['id']} is {p['status']}: " + str(p["history"][-1][2]))
        c.not_reached(name, why)
        return None
    moves = ", ".join(f"{m['name']} {m['old']!r} -> {m['new']!r}" for m in p.get("moves", [])) \
        or p["description"]
    generation = next((g for g, values in enumerate(ev.tunables)
                       if g > 0 and all(values.get(m["name"]) == m["new"] for m in p.get("moves", []))),
                      None)
    first = next((s.request for s in ev.served if generation is not None and s.tunables == generation), None)
    later = f", rolled back since ({p['history'][-1][2]})" if p["status"] == "rolled_back" else ""
    c.reached(name, f"{p['id']}: {moves}, serving from request {first}{later}",
              proposal=p["id"], moves=p.get("moves", []), request=first, status=p["status"])
    return generation


def _effect(ev: DemoEvidence, c: Checklist, generation: int | None) -> None:
    name = STAGES[3]
    if generation is None:
        c.not_reached(name, "no patch was applied")
        return
    after_all = [s for s in ev.served if s.tunables == generation and s.drifted]
    if not after_all:
        c.not_reached(name, "no request was served with the patch")
        return
    version = after_all[0].version
    before = [s for s in ev.served if s.drifted and s.version == version and s.tunables == generation - 1]
    after = [s for s in after_all if s.version == version]
    if min(len(before), len(after)) < MIN_EFFECT_REQUESTS:
        c.not_reached(name, f"model version {version} answered {len(before)} drifted requests "
                      f"before the patch and {len(after)} with it; {MIN_EFFECT_REQUESTS} each "
                      "are needed to tell the patch's effect from a model swap's")
        return
    metric = _tested_metric(ev, generation)
    if metric not in ("nll", "error_rate"):  # a latency patch, say: judged by the NLL here
        metric = "nll"
    figures: dict[str, dict[str, Any]] = {}
    for name_, value in (("nll", lambda s: s.nll), ("error_rate", lambda s: float(not s.correct))):
        a, b = [value(s) for s in before], [value(s) for s in after]
        change, lo, hi = _diff_interval(a, b)
        figures[name_] = {"before": _mean(a), "after": _mean(b), "change": change, "interval": [lo, hi]}
    lo, hi = figures[metric]["interval"]
    verdict = "better" if hi < 0 else "worse" if lo > 0 else "no clear change"

    def show(name_: str, fmt: str) -> str:
        f = figures[name_]
        return (f"{name_} {f['before']:{fmt}} -> {f['after']:{fmt}} ({f['change']:+{fmt}} "
                f"[{f['interval'][0]:+{fmt}}, {f['interval'][1]:+{fmt}}])")

    c.reached(name, f"on the {metric} it was tested on: {verdict}; {show('error_rate', '.1%')}, "
              f"mean {show('nll', '.3f')}; the drifted requests model version {version} answered "
              f"({len(before)} before the patch, {len(after)} with it)",
              version=version, metric=metric, verdict=verdict, requests_before=len(before),
              requests_after=len(after), **figures)


def _tested_metric(ev: DemoEvidence, generation: int) -> str | None:
    """The benchmark metric the patch that started ``generation`` was tested on."""
    values = ev.tunables[generation]
    for p in ev.proposals:
        if _applied(p) and p.get("moves") and all(values.get(m["name"]) == m["new"] for m in p["moves"]):
            return (p.get("test_result") or {}).get("metric")
    return None


def _training(ev: DemoEvidence, c: Checklist, p: dict[str, Any] | None) -> None:
    run_name, valid_name = STAGES[4], STAGES[5]
    if p is None or not _applied(p):
        c.not_reached(run_name, "no patch was applied")
        c.not_reached(valid_name, "no run was triggered by a patch")
        return
    run = next((r for r in ev.runs if r["trigger"] == "rsi_triggered" and p["id"] in (r["reason"] or "")),
               None)
    if run is None:
        c.not_reached(run_name, f"no training run concluded after {p['id']} asked for one")
        c.not_reached(valid_name, "no run was triggered by the patch")
        return
    if run["status"] in ("failed", "timeout"):
        c.errored(run_name, f"run {run['run_id']} {run['status']}: {run['error']}")
        c.not_reached(valid_name, f"run {run['run_id']} {run['status']}")
        return
    if run["status"] in ("cancelled", "skipped"):
        c.not_reached(run_name, f"run {run['run_id']} {run['status']}: {run['error']}")
        c.not_reached(valid_name, f"run {run['run_id']} {run['status']}")
        return
    secs = (run.get("timings") or {}).get("total")
    c.reached(run_name, f"run {run['run_id']}: {run['train_samples']} samples trained on, "
              f"{run['holdout_samples']} held out" + (f", {secs:.1f} s" if secs else ""),
              run_id=run["run_id"], status=run["status"])
    v = run.get("validation")
    if not v:
        c.not_reached(valid_name, f"run {run['run_id']} had no held-out samples to validate on")
        return
    c.reached(valid_name, f"candidate v{run['version']} accuracy {_pct(v['candidate_accuracy'])} vs "
              f"active v{run['validated_against']} {_pct(v['active_accuracy'])} on {v['n']} held-out "
              f"samples, improvement {v['improvement_pct']:+.1f}% [{v['ci_low']:+.1f}, "
              f"{v['ci_high']:+.1f}] at {v['confidence_level']:.0%}: "
              + ("better, swapped in" if run["swapped"] else f"{run['status']}"),
              run_id=run["run_id"], validation=v, swapped=run["swapped"])


def _swapped(ev: DemoEvidence, c: Checklist) -> int | None:
    name = STAGES[6]
    swaps = [s for s in ev.swaps if s[0] >= ev.drift_started]
    if not swaps:
        concluded = [r for r in ev.runs if r["validation"]]
        c.not_reached(name, "no candidate beat the served model" + (
            f" ({len(concluded)} validated)" if concluded else ""))
        return None
    runs = {r["run_id"]: r for r in ev.runs}
    text = "; ".join(f"v{v} from request {req} (run {rid}, {runs[rid]['trigger'] if rid in runs else '?'})"
                     for req, v, rid in swaps)
    c.reached(name, text, swaps=[list(s) for s in swaps])
    return swaps[-1][0]


def _recovered(ev: DemoEvidence, c: Checklist, last_swap: int | None) -> None:
    name = STAGES[7]
    served = ev.served

    def accuracy(rows: list[Served]) -> float | None:
        return _mean([float(s.correct) for s in rows]) if rows else None

    clean = accuracy([s for s in served if not s.drifted])
    drifted = [s for s in served if s.drifted]
    # before any fix: drifted requests answered by the model and tunables serving at the drift
    before = accuracy([s for s in drifted if (s.version, s.tunables) == (drifted[0].version, drifted[0].tunables)]
                      if drifted else [])
    if last_swap is None:
        c.not_reached(name, f"no better model was swapped in (clean {_pct(clean)}, drifted {_pct(before)})")
        return
    after = accuracy([s for s in served if s.request > last_swap])
    facts = {"clean": clean, "drifted_before_fixes": before, "after_last_swap": after}
    if clean is None or before is None or after is None:
        c.not_reached(name, "too few requests to tell", **facts)
        return
    drop = clean - before
    regained = (after - before) / drop if drop > 0 else 0.0
    text = (f"accuracy clean {_pct(clean)}, drifted before any fix {_pct(before)}, after the last "
            f"swap {_pct(after)} (regained {regained:.0%} of the drop)")
    if drop > 0 and regained >= 0.5:
        c.reached(name, text, **facts, regained=regained)
    else:
        c.not_reached(name, text + "; at least half of the drop must be regained", **facts,
                      regained=regained)


def tests_phrase(result: dict[str, Any]) -> str:
    """A sandbox result's test counts as a reader takes them: ``tests: 4 passed, 1 skipped,
    0 failed`` (a bare "4/5 passed" reads as a failure when the fifth was skipped, as the
    original's own run skips it).
    """
    run, passed, failed = (int(result.get(k) or 0) for k in ("tests_run", "tests_passed", "tests_failed"))
    skipped = run - passed - failed
    return f"tests: {passed} passed, " + (f"{skipped} skipped, " if skipped else "") + f"{failed} failed"


def loop_checklist(ev: DemoEvidence) -> Checklist:
    """The eight stages of the loop (:data:`STAGES`) as shown by ``ev``."""
    c = Checklist("vortex demo")
    _weakness(ev, c)
    p = _proposal_tested(ev, c)
    generation = _patch_applied(ev, c, p)
    _effect(ev, c, generation)
    _training(ev, c, p)
    _recovered(ev, c, _swapped(ev, c))
    return c
