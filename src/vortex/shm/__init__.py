"""Shared memory between serving workers and the control plane of one home.

Each serving worker process writes its own segment (:class:`WorkerSegment`): a metric window
(latency, confidence, error per request), a sample ring (training samples with their labels)
and two mergeable histograms (latency in seconds, confidence), at the cost of the in-process
calls. The control plane reads every worker's segment (:class:`FleetReader`, or
:class:`SegmentReader` for one): new records since its cursors, merged histograms, which
workers are alive; it folds and removes dead workers' segments once read. docs/SHM.md
describes the format, the reader protocol and the crash and cleanup rules.

Names are resolved lazily (PEP 562): importing this package loads neither NumPy nor the
compiled core.
"""

from __future__ import annotations

from typing import Any

from .._lazy import resolve

_LAZY: dict[str, str] = {
    "WorkerSegment": "vortex.shm.writer",
    "SegmentReader": "vortex.shm.reader",
    "MetricRecords": "vortex.shm.records",
    "SampleRows": "vortex.shm.records",
    "SegmentTotals": "vortex.shm.records",
    "FleetReader": "vortex.shm.fleet",
    "FleetBatch": "vortex.shm.fleet",
    "WorkerInfo": "vortex.shm.fleet",
    "LogHistogram": "vortex.shm.histogram",
    "segment_dir": "vortex.shm.location",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    return resolve(__name__, _LAZY, globals(), name)


def __dir__() -> list[str]:
    return sorted(__all__)
