"""Objects replicas share across machines, for the fault suites: the control-plane lease and a
replica's sample spool and record spool. Each ``make_*`` writes one into a directory (as a local file: the
readers are the same for an object on S3), each ``load_*`` reads it as a replica would and
returns everything a user can observe (``harness.py`` explains the protocol). ``KINDS`` lists
them for ``tests/serving/test_replica_corruption.py`` and ``scripts/fault_sweep.py``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

LEASE = "control.lease"
SPOOL = "b.arrow"
RECORDS = "records-b.arrow"


def make_lease(directory: str) -> None:
    """A lease record of a holder at its 7th renewal after 2 takeovers."""
    from vortex.serving.lease import LeaseRecord

    record = LeaseRecord("machine-b", 4242, "9f" * 16, 3, 7, 10.0, 1.0, False, 1.7e9)
    with open(os.path.join(directory, LEASE), "wb") as f:
        f.write(record.to_bytes())


def load_lease(directory: str) -> Any:
    """The record's fields."""
    from vortex.serving.lease import LeaseRecord

    path = os.path.join(directory, LEASE)
    with open(path, "rb") as f:
        return dataclasses.asdict(LeaseRecord.parse(f.read(), path))


def make_spool(directory: str) -> None:
    """Replica b's spool of 12 samples from two worker segments."""
    from vortex.serving.replica import spool_metadata
    from vortex.training.buffer import SampleBuffer

    buf = SampleBuffer(3, 50)
    for i in range(12):
        buf.push(np.array([i, i / 2, -i], np.float32), i % 3, 0.5, 0.25, episode=i, timestamp=1000.0 + i)
    buf.save(os.path.join(directory, SPOOL),
             metadata=spool_metadata("b", "0123abcd", {"worker-1-2-0000000000000001.seg": 7,
                                                       "worker-3-4-0000000000000002.seg": 5}))


def load_spool(directory: str) -> Any:
    """The rows, seq numbers, incarnation and marks as the merger reads them."""
    from vortex.serving.replica import load_spool as load

    buf, incarnation, marks = load(os.path.join(directory, SPOOL), "b", {})
    snap = buf.snapshot()
    return {"rows": [snap.features.tolist(), snap.labels.tolist(), snap.confidence.tolist(), snap.error.tolist(),
                     snap.timestamp.tolist(), snap.seq.tolist(), snap.episode.tolist()],
            "next_seq": buf.next_seq, "incarnation": incarnation, "marks": marks}


def make_records(directory: str) -> None:
    """Replica b's record spool: 12 request records from two worker segments."""
    from vortex.serving.record_spool import RecordSpool
    from vortex.serving.replica import spool_metadata

    spool = RecordSpool(50)
    i = np.arange(12)
    spool.extend(timestamp=1000.0 + i, latency_ms=2.0 * i, confidence=i / 12, error=np.where(i % 2, 0.5, np.nan),
                 version=i % 3 - 1)
    spool.save(os.path.join(directory, RECORDS),
               metadata=spool_metadata("b", "0123abcd", {"worker-1-2-0000000000000001.seg": 7,
                                                         "worker-3-4-0000000000000002.seg": 5}))


def load_records(directory: str) -> Any:
    """The records, their seq numbers, the incarnation and marks as the merger reads them."""
    from vortex.serving.record_spool import RecordSpool
    from vortex.serving.replica import load_spool as load

    spool, incarnation, marks = load(os.path.join(directory, RECORDS), "b", {},
                                     load=lambda url, options: RecordSpool.load(url, storage_options=options))
    rows = spool.snapshot()
    return {"rows": [rows[name].tolist() for name in rows.dtype.names], "next_seq": spool.next_seq,
            "incarnation": incarnation, "marks": marks}


KINDS = [
    ("control lease", make_lease, LEASE, "replica_loaders:load_lease", None),
    ("replica spool", make_spool, SPOOL, "replica_loaders:load_spool", None),
    ("replica record spool", make_records, RECORDS, "replica_loaders:load_records", None),
]
