"""Shared-memory files for the fault suites: a worker's segment (closed, and as a writer killed
mid-record leaves it) and the control plane's fleet state. Each ``make_*`` writes one into a
directory, each ``load_*`` reads it as the control plane would and returns everything a user
can observe (``harness.py`` explains the protocol). ``KINDS`` lists them for
``tests/shm/test_corruption.py`` and ``scripts/fault_sweep.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np

import shm_support as s

SEGMENT = "worker-1-2-00000000000000ab.seg"
STATE = "fleet-state.json"
N = 21  # records and samples: both rings (16 and 8) have wrapped


def _write_segment(directory: str) -> str:
    """A closed segment of N patterned records and samples, moved into ``directory``."""
    from vortex.shm import WorkerSegment
    from vortex.shm.location import segment_dir

    with tempfile.TemporaryDirectory() as home:
        seg = WorkerSegment.create(home, 3, window=16, ring_capacity=8)
        for i in range(N):
            s.write(seg, i)
        seg.close()
        path = os.path.join(directory, SEGMENT)
        shutil.move(seg.path, path)
        shutil.rmtree(segment_dir(home))
    return path


def make_closed(directory: str) -> None:
    _write_segment(directory)


def make_killed(directory: str) -> None:
    """As a writer killed after completing record N-1 but before publishing it (the latency
    histogram counted it, the confidence one not yet), and in the middle of pushing sample N."""
    path = _write_segment(directory)
    s.u64(path, s.CLOSED, 0)
    s.u64(path, s.COUNT, N - 1)
    s.uncount(path, 1, s.metric_values(N - 1)[1])
    torn = s.sample_ring_at(16) + (N % 8) * s.sample_slot_size(3)
    s.u64(path, torn, 2 * N + 1)
    with open(path, "r+b") as fh:
        fh.seek(torn + 16)
        fh.write(b"\x5a" * 20)


def _floats(a: np.ndarray) -> list[str]:
    return [repr(float(v)) for v in a]  # NaN compares equal as text


def load_segment(directory: str) -> dict[str, Any]:
    """Open the segment as the control plane does and read everything out of it."""
    from vortex.shm import SegmentReader

    with SegmentReader(os.path.join(directory, SEGMENT)) as r:
        t = r.totals()
        m, rows = r.read_metrics(), r.read_samples()
        return {
            "writer": [r.pid, r.start_ticks, r.segment_id, r.created],
            "shape": [r.feature_dim, r.label_dtype, r.window, r.ring_capacity],
            "alive": r.alive(), "closed": r.counters()[2], "at_end": r.at_end(),
            "totals": t.to_json(),
            "metrics": [m.index.tolist(), m.t_ns.tolist(), _floats(m.latency_ms),
                        _floats(m.confidence), _floats(m.error), m.request.tolist(), m.version.tolist(),
                        m.lost],
            "samples": [rows.seq.tolist(), _floats(rows.features.ravel()), rows.labels.tolist(),
                        _floats(rows.confidence), _floats(rows.error), _floats(rows.timestamp),
                        rows.episode.tolist(), rows.worker.tolist(), rows.request.tolist(),
                        rows.version.tolist(), _floats(rows.misclassified), _floats(rows.nll), rows.lost],
        }


def make_state(directory: str) -> None:
    """The state after one worker was folded and another one is being read."""
    from vortex.shm.histogram import LogHistogram
    from vortex.shm.records import SegmentTotals
    from vortex.shm.state import FleetState

    retired = SegmentTotals(LogHistogram.of(s.latency_seconds(50)), LogHistogram.of(s.confidences(50)),
                            50, 12, 5.5, 49)
    FleetState(cursors={SEGMENT: (0xAB, 40, 39)}, retired=retired, retired_workers=1,
               folded={"worker-7-8-00000000000000cd.seg": 0xCD}).save(os.path.join(directory, STATE))


def load_state(directory: str) -> dict[str, Any]:
    from vortex.shm.state import FleetState

    st = FleetState.load(os.path.join(directory, STATE))
    return {"cursors": st.cursors, "retired": st.retired.to_json(), "workers": st.retired_workers,
            "folded": st.folded}


KINDS = [
    ("segment (closed)", make_closed, SEGMENT, "shm_loaders:load_segment", None),
    ("segment (writer killed)", make_killed, SEGMENT, "shm_loaders:load_segment", None),
    ("fleet state", make_state, STATE, "shm_loaders:load_state", None),
]
