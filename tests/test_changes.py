"""ChangeBoard.wait_for_other_watch: an automatic change waits for another change's verdict."""

from __future__ import annotations

import threading
import time

from vortex.changes import ChangeBoard
from vortex.watch import RegressionWatch


def _watch(verdicts: list) -> RegressionWatch:
    return RegressionWatch("watch of p1", "error", True, 5, 0.5, 0.4, on_regress=verdicts.append,
                           on_pass=verdicts.append)


def _later(seconds: float, action) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    t.start()
    return t


def test_no_watch_or_ones_own_does_not_wait():
    board = ChangeBoard()
    assert board.wait_for_other_watch("training", 0.0)
    board.changed("training", "version 2 swapped in", watch=_watch([]))
    assert board.wait_for_other_watch("training", 0.0)  # its own kind: a newer model supersedes
    assert not board.wait_for_other_watch("rsi", 0.0)


def test_the_wait_ends_with_the_verdict_or_a_change_or_the_bound():
    verdicts: list = []
    board = ChangeBoard()
    board.changed("rsi", "proposal p1 applied", watch=_watch(verdicts))
    feeder = _later(0.2, lambda: [board.observe(1, error=0.3) for _ in range(5)])
    assert board.wait_for_other_watch("training", 60.0)  # judged by the requests that came
    feeder.join()
    assert len(verdicts) == 1 and board.watching() is None

    board.changed("rsi", "proposal p2 applied", watch=_watch(verdicts))
    operator = _later(0.2, lambda: board.changed("training", "rolled back to version 1"))
    assert board.wait_for_other_watch("training", 60.0)  # a change (an operator's) ended it
    operator.join()

    board.changed("rsi", "proposal p3 applied", watch=_watch(verdicts))
    assert not board.wait_for_other_watch("training", 0.3)  # the bound: no requests came
    stop = threading.Event()
    _later(0.2, stop.set).join(0)
    assert not board.wait_for_other_watch("training", 60.0, stop.is_set)  # cancelled early
    assert board.watching() is not None and len(verdicts) == 1
