import json
import sys
import os
import time

import numpy as np
import pytest

from hypothesis import given, settings as hsettings, strategies as st
from vortex.errors import RSIError
from vortex.monitor.weaknesses import Weakness, WeaknessType
from vortex.rsi.diffs import parse_diff
from vortex.rsi.proposal import TunableMove
from vortex.rsi.proposers import (CommandProposer, ConfidenceProposer, ErrorHandlingProposer,
                                  MemoryProposer, OutcomeMemory, PerformanceProposer,
                                  ProposerContext, _nll, default_proposers, fit_temperature)
from vortex.rsi.settings import load_settings


def W(kind, severity=0.5):
    return Weakness(WeaknessType(kind), severity, "test", time.time(), 2.0, 1.0, 100)


@pytest.fixture
def ctx(sample_tree, tmp_path):
    return ProposerContext(load_settings(sample_tree), OutcomeMemory(str(tmp_path / "memory.json")))


def _changed(draft):
    (f,) = parse_diff(draft.diff)
    (h,) = f.hunks
    return f.path, h.removed, h.added


def test_performance_halves_ensemble(ctx):
    d = PerformanceProposer().propose(W("latency_spike"), ctx)
    path, removed, added = _changed(d)
    assert path == "sample_service/tunables.toml"
    assert removed[0].startswith("ensemble_size = 32") and added[0].startswith("ensemble_size = 16")
    assert added[0].endswith('# members averaged in "thorough" mode: latency grows with it')
    assert d.moves == [TunableMove("ensemble_size", 32, 16, "decrease")]


def test_memory_and_error_proposers(ctx):
    d = MemoryProposer().propose(W("memory_pressure"), ctx)
    assert _changed(d)[2][0].startswith("cache_size = 1024")
    d = ErrorHandlingProposer().propose(W("prediction_error_spike"), ctx)
    assert _changed(d)[2][0].startswith("impute_missing = true")
    assert ErrorHandlingProposer().propose(W("memory_pressure"), ctx) is None or \
        not ErrorHandlingProposer().handles(W("memory_pressure"))


def test_learns_from_failed_directions(ctx):
    p = PerformanceProposer()
    d = p.propose(W("latency_spike"), ctx)
    ctx.memory.block("latency_spike", d.moves[0])
    assert p.propose(W("latency_spike"), ctx) is None  # the only latency tunable's direction failed
    # a different weakness kind is not affected, and the memory survives a restart
    assert p.propose(W("throughput_drop"), ctx) is not None
    again = OutcomeMemory(ctx.memory.path)
    assert again.is_blocked("latency_spike", "ensemble_size", "decrease")


def test_stops_at_the_bound(ctx):
    path = os.path.join(ctx.settings.root, "sample_service", "tunables.toml")
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace("ensemble_size = 32", "ensemble_size = 1"))
    assert PerformanceProposer().propose(W("latency_spike"), ctx) is None


def test_fit_temperature_matches_scipy_and_grid():
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    logits = rng.normal(0, 1, (500, 4))
    logits[np.arange(500), labels] += 1.5
    logits *= 3.0  # overconfident: best T > 1
    t = fit_temperature(logits, labels)
    ref = minimize_scalar(lambda lt: _nll(logits, labels, np.exp(lt)), bounds=(np.log(0.05), np.log(20)),
                          method="bounded", options={"xatol": 1e-8}).x
    assert t == pytest.approx(np.exp(ref), rel=1e-3) and t > 1
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    best = grid[np.argmin([_nll(logits, labels, g) for g in grid])]
    assert t == pytest.approx(best, rel=5e-3)


@hsettings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 8.0))
def test_fit_temperature_never_worse_than_neighbours(seed, scale):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 200)
    logits = rng.normal(0, scale, (200, 3))
    t = fit_temperature(logits, labels)
    assert 0.05 <= t <= 20
    f = _nll(logits, labels, t)
    for other in (t * 1.05, t / 1.05):
        if 0.05 <= other <= 20:
            assert f <= _nll(logits, labels, other) + 1e-9


def test_fit_temperature_validates():
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="labels must be"):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.full((3, 2), np.nan), np.array([0, 1, 0]))


def test_confidence_proposer_uses_fitted_temperature(ctx):
    sys.path.insert(0, ctx.settings.root)
    try:
        from sample_service import Service, make_data
        svc = Service()
        x, y = make_data(300, seed=4)
        logits = np.array([svc.logits(r, "thorough") for r in x])
    finally:
        sys.path.remove(ctx.settings.root)
        for m in [m for m in sys.modules if m.startswith("sample_service")]:
            del sys.modules[m]
    ctx.calibration_data = lambda: (logits, y)
    d = ConfidenceProposer().propose(W("confidence_low"), ctx)
    t = fit_temperature(logits, y, lo=0.05, hi=20.0)
    assert d.moves[0].name == "temperature" and d.moves[0].new == pytest.approx(t, rel=1e-3)
    assert d.expected_improvement["nll_after"] < d.expected_improvement["nll_before"]
    # without data it falls back to a one-step move in the declared direction
    ctx.calibration_data = lambda: None  # nothing buffered yet
    assert ConfidenceProposer().propose(W("confidence_low"), ctx).moves[0].new == round(4.0 / 1.5, 6)
    ctx.calibration_data = None
    d = ConfidenceProposer().propose(W("confidence_low"), ctx)
    assert d.moves == [TunableMove("temperature", 4.0, round(4.0 / 1.5, 6), "decrease")]


def _calibration(scale):
    """Logits of a 4-class problem, sharpened by ``scale``: > 1 makes the model overconfident
    (the NLL-optimal temperature is above 1), < 1 underconfident (below 1)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), labels] += 1.0
    return logits * scale, labels


def _set_temperature(ctx, value):
    path = os.path.join(ctx.settings.root, "sample_service", "tunables.toml")
    with open(path) as fh:
        text = fh.read()
    import re
    with open(path, "w") as fh:
        fh.write(re.sub(r"^temperature = [0-9.]+", f"temperature = {value}", text, flags=re.M))


def test_temperature_is_fitted_only_in_the_declared_direction(ctx):
    """The sample service declares temperature "decrease" for low confidence. An
    overconfident model's fit wants a higher temperature: that must not be proposed for low
    confidence (it lowers confidence further), nor a step down (the data says it is worse)."""
    _set_temperature(ctx, 1.0)
    ctx.calibration_data = lambda: _calibration(4.0)  # overconfident: fit > 1
    assert fit_temperature(*_calibration(4.0), lo=0.05, hi=20.0) > 1.0
    d = ConfidenceProposer().propose(W("confidence_low"), ctx)
    assert d is None or all(m.name != "temperature" for m in d.moves)
    # underconfident: the fit lowers the temperature, the declared way: proposed
    ctx.calibration_data = lambda: _calibration(0.3)
    d = ConfidenceProposer().propose(W("confidence_low"), ctx)
    assert d.moves[0].name == "temperature" and d.moves[0].direction == "decrease"
    assert d.moves[0].new < 1.0 and d.expected_improvement["nll_after"] < d.expected_improvement["nll_before"]


def test_temperature_is_not_fitted_under_a_weakness_it_does_not_address(ctx):
    """The demo service declares temperature for confidence_low only; a confidence drop must
    not move it (the demo proposed temperature 1.0 -> 1.08 for one)."""
    from vortex.rsi.settings import load_settings

    root = ctx.settings.root
    path = os.path.join(root, "pyproject.toml")
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace('addresses = { confidence_low = "decrease", confidence_drop = "decrease" }',
                              'addresses = { confidence_low = "decrease" }'))
    ctx.settings = load_settings(root)
    _set_temperature(ctx, 1.0)
    ctx.calibration_data = lambda: _calibration(0.3)  # a fit would lower it
    d = ConfidenceProposer().propose(W("confidence_drop"), ctx)
    assert d is None or all(m.name != "temperature" for m in d.moves)


PROPOSER_SCRIPT = r'''
import json, sys
report = json.load(sys.stdin)
with open(sys.argv[1], "w") as fh:
    json.dump(report, fh)
mode = sys.argv[2]
if mode == "hang":
    import time; time.sleep(60)
if mode == "garbage":
    print("I would change the cache, maybe")
    sys.exit(0)
path = report["root"] + "/sample_service/tunables.toml"
old = open(path).read()
new = old.replace("cache_size = 4096", "cache_size = 2048")
import difflib
sys.stdout.write("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                 "a/sample_service/tunables.toml", "b/sample_service/tunables.toml")))
'''


def _with_command(sample_tree, tmp_path, mode, timeout=10):
    script = tmp_path / "llm.py"
    script.write_text(PROPOSER_SCRIPT)
    out = tmp_path / "report.json"
    pp = os.path.join(sample_tree, "pyproject.toml")
    with open(pp, "a") as fh:
        fh.write(f'\n[tool.vortex.command_proposer]\ncommand = ["{{python}}", "{script}", "{out}", "{mode}"]\n'
                 f'timeout_secs = {timeout}\nweaknesses = ["memory_pressure"]\n')
    s = load_settings(sample_tree)
    return s, out


def test_command_proposer_takes_the_printed_diff(sample_tree, tmp_path):
    s, out = _with_command(sample_tree, tmp_path, "ok")
    assert isinstance(default_proposers(s)[-1], CommandProposer)
    cp = CommandProposer(s)
    assert cp.handles(W("memory_pressure")) and not cp.handles(W("latency_spike"))
    ctx = ProposerContext(s, OutcomeMemory(str(tmp_path / "m.json")))
    d = cp.propose(W("memory_pressure"), ctx)
    assert d.proposer == "command" and "cache_size = 2048" in d.diff
    report = json.loads(out.read_text())
    assert report["weakness"]["type"] == "memory_pressure"
    assert {t["name"]: t["value"] for t in report["tunables"]}["cache_size"] == 4096


@pytest.mark.parametrize("mode,match", [("garbage", "no usable diff"), ("hang", "timed out")])
def test_command_proposer_failures(sample_tree, tmp_path, mode, match):
    s, _ = _with_command(sample_tree, tmp_path, mode, timeout=1)
    t0 = time.monotonic()
    with pytest.raises(RSIError, match=match):
        CommandProposer(s).propose(W("memory_pressure"), ProposerContext(s, OutcomeMemory(str(tmp_path / "m.json"))))
    assert time.monotonic() - t0 < 10
