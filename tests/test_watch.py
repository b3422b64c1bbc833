"""The one signal path: RegressionWatch judged on the ChangeBoard, fed by observe()."""

import math

import pytest

from vortex.changes import ChangeBoard
from vortex.watch import RegressionWatch


def watch(verdicts, **kw):
    args = dict(description="watch of x", metric="latency_ms", lower_is_better=True, samples=3,
                threshold=0.1, baseline=10.0, on_regress=verdicts.append, on_pass=verdicts.append)
    return RegressionWatch(**{**args, **kw})


@pytest.mark.parametrize("values, lower, relative, regressed", [
    ([11.5, 11.5, 11.5], True, True, True),     # +15% latency > 10%
    ([10.5, 10.5, 10.5], True, True, False),    # +5%
    ([8.5, 8.5, 8.5], False, True, True),       # confidence -15%
    ([10.2, 10.2, 10.2], True, False, True),    # +0.2 absolute > 0.1
    ([10.05, 10.05, 10.05], True, False, False),
])
def test_a_full_watch_is_judged_once_in_its_direction(values, lower, relative, regressed):
    verdicts = []
    board = ChangeBoard()
    board.changed("rsi", "p1", watch=watch(verdicts, lower_is_better=lower, relative=relative))
    for v in values[:-1]:
        board.observe(None, latency_ms=v)
    assert verdicts == [] and board.watching() is not None
    board.observe(None, latency_ms=values[-1])
    (v,) = verdicts
    assert v.regressed is regressed and v.requests == 3 and v.after == pytest.approx(values[0])
    assert board.watching() is None
    board.observe(None, latency_ms=100.0)
    assert len(verdicts) == 1


def test_only_requests_of_the_watched_version_count_and_nan_is_not_a_value():
    verdicts = []
    board = ChangeBoard()
    board.changed("training", "v2", watch=watch(verdicts, metric="error", version=2, baseline=0.1,
                                               relative=False))
    board.observe(1, error=1.0)          # served by the old version: not the new one's doing
    board.observe(2, error=math.nan)     # no ground truth
    board.observe(2, latency_ms=5.0)     # another figure
    assert board.watching().values == []
    for _ in range(3):
        board.observe(2, error=0.5)
    assert [v.regressed for v in verdicts] == [True]


def test_the_guard_counts_only_when_the_primary_did_not_improve():
    def run(error):
        verdicts = []
        board = ChangeBoard()
        board.changed("training", "v2", watch=watch(
            verdicts, metric="error", baseline=0.4, relative=False, threshold=0.1,
            guard=("confidence", False, 0.9)))
        for _ in range(3):
            board.observe(None, error=error, confidence=0.6)
        return verdicts[0]

    better = run(0.1)  # far fewer errors, lower confidence: better calibrated, kept
    assert not better.regressed and better.metric == "error"
    same = run(0.4)    # same error, much lower confidence: regressed on the guard
    assert same.regressed and same.metric == "confidence" and same.after == pytest.approx(0.6)


def test_a_change_supersedes_the_running_watch_and_restarts_the_baseline():
    audited, verdicts = [], []
    board = ChangeBoard(audit=lambda event, **fields: audited.append((event, fields)))
    board.keep(5)
    for v in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        board.observe(7, latency_ms=v)
    assert board.recent("latency_ms", 5) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert board.recent("latency_ms", 2, version=7) == [5.0, 6.0] and board.recent("latency_ms", 2, version=8) == []
    board.changed("rsi", "p1", watch=watch(verdicts))
    board.observe(None, latency_ms=50.0)
    board.changed("training", "v3 swapped in")
    assert board.watching() is None and verdicts == []
    [(event, fields)] = audited
    assert event == "watch_superseded" and fields["by"] == "training"
    assert fields["watch"] == "watch of x (latency_ms, 1 of 3 requests)"
    assert board.recent("latency_ms", 5) == []  # the baseline starts anew at every change


def test_observe_never_raises_and_is_skipped_when_nothing_listens(caplog):
    board = ChangeBoard()
    assert not board.needs_observations
    board.observe(None, latency_ms=1.0)
    assert board.recent("latency_ms", 5) == []  # nobody keeps a baseline
    board.keep(5, ("error",))  # only what a component asks for is kept
    board.answered(None, 1.0, 0.9)
    board.labelled(None, 0.5, 1.0, 0.7, 0.9)
    assert board.recent("error", 5) == [0.5] and board.recent("latency_ms", 5) == []
    assert board.recent("nll", 5) == [] and board.needs_observations

    def broken(verdict):
        raise RuntimeError("rollback failed")

    board.changed("rsi", "p1", watch=watch([], samples=1, on_regress=broken))
    assert board.needs_observations
    board.observe(None, latency_ms=100.0)  # regressed; the callback's failure stays here
    assert "rollback failed" in caplog.text and board.watching() is None


def test_the_positional_forms_keep_what_observe_keeps():
    """answered()/labelled() are the request path's fast forms of observe(): the same figures
    kept, in the same order, for the same versions; no labelled figure kept that nobody asked
    for."""
    from vortex.changes import OBSERVED

    rows = [(v % 3 or None, 0.1 * v, float(v % 2), None if v % 4 == 0 else 0.3 * v, 0.9 - 0.01 * v)
            for v in range(40)]
    for kept in [("error", "labelled_confidence"), ("nll",), ("misclassified", "latency_ms"), OBSERVED]:
        fast, slow = ChangeBoard(), ChangeBoard()
        fast.keep(25, kept)
        slow.keep(25, kept)
        for version, error, wrong, nll, conf in rows:
            fast.answered(version, 10.0 + error, conf)
            slow.observe(version, latency_ms=10.0 + error, confidence=conf)
            fast.labelled(version, error, wrong, nll, conf)
            slow.observe(version, error=error, misclassified=wrong, nll=nll, labelled_confidence=conf)
        for name in OBSERVED:
            if name in kept:
                assert fast.recent(name, 25) == slow.recent(name, 25), (kept, name)
                assert fast.recent(name, 25, version=2) == slow.recent(name, 25, version=2), (kept, name)
                assert fast.recent(name, 25), (kept, name)
            elif name not in ("latency_ms", "confidence"):  # answered() keeps that pair together
                assert fast.recent(name, 25) == [], (kept, name)
