"""The request identity of format 3 (docs/SHM.md): what record_answer and push_feedback refuse,
and that a refused call stores nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vortex.shm import SegmentReader, WorkerSegment


@pytest.mark.parametrize("args,name", [
    ((1.0, 0.5, -1, 2), "request=-1"), ((1.0, 0.5, 1.5, 2), "request=1.5"), ((1.0, 0.5, True, 2), "request=True"),
    ((1.0, 0.5, 3, -2), "version=-2"), ((1.0, 0.5, 3, "2"), "version='2'"), ((-1.0, 0.5, 3, 2), "latency_ms=-1.0"),
    ((1.0, 1.5, 3, 2), "confidence=1.5"),
])
def test_record_answer_refuses_a_bad_value_naming_it_and_records_nothing(home, args, name):
    seg = WorkerSegment.create(home, 2)
    with pytest.raises(ValueError, match=name.replace("(", r"\(")):
        seg.record_answer(*args)
    assert seg.records == 0
    seg.record_answer(1.0, 0.5, None, None, True)  # a 5xx before the model
    with SegmentReader(seg.path) as r:
        m = r.read_metrics()
        assert (m.request.tolist(), m.version.tolist()) == ([-1], [-1]) and r.totals().failed == 1
    seg.close()


@pytest.mark.parametrize("origin,name", [
    ((-1, 0, 0, 0.0, 0.1), "worker=-1"), ((1 << 64, 0, 0, 0.0, 0.1), "worker="), (("a", 0, 0, 0.0, 0.1), "worker='a'"),
    ((1, -3, 0, 0.0, 0.1), "request=-3"), ((1, 0, 2.5, 0.0, 0.1), "version=2.5"),
    ((1, 0, 0, 2.0, 0.1), "misclassified=2.0"), ((1, 0, 0, 0.0, -0.5), "nll=-0.5"),
    ((1, 0, 0, 0.0, math.inf), "nll=inf"),
])
def test_push_feedback_refuses_a_bad_origin_naming_it_and_stores_nothing(home, origin, name):
    seg = WorkerSegment.create(home, 2)
    with pytest.raises(ValueError, match=name):
        seg.push_feedback(np.zeros(2, np.float32), 1, 0.5, 0.5, 0, *origin)
    assert seg.samples == 0
    seg.push_feedback(np.zeros(2, np.float32), 1, 0.5, 0.5, 0, (1 << 64) - 1, 7, 3, float("nan"), None)
    with SegmentReader(seg.path) as r:
        rows = r.read_samples()
        assert int(rows.worker[0]) == (1 << 64) - 1 and (rows.request[0], rows.version[0]) == (7, 3)
        assert math.isnan(rows.misclassified[0]) and math.isnan(rows.nll[0])
    seg.close()
