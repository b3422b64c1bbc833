"""The control plane's view of every worker of a home: :class:`FleetReader`.

It finds the segments of a home's workers, reads from each what is new since its cursor,
merges their histograms (plus those of the workers already gone), tells which workers are
alive, and, once a dead worker's segment was read to its end and the caller committed, folds
that worker's totals into the persisted state and removes its file. Typical control-plane
loop::

    fleet = FleetReader(home)
    while running:
        batch = fleet.read_new()            # new metric records and samples of every worker
        consume(batch)                      # feed the detector, spool the samples...
        fleet.commit()                      # then persist the cursors, fold the dead workers
        latency, confidence = fleet.histograms()

Delivery is at least once: a control plane that dies between ``read_new`` and ``commit`` has
its successor read those records again (``(worker name, index/seq)`` identifies a record).
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .._io import remove_orphan_temps
from ..errors import CorruptFileError
from .histogram import LogHistogram
from .location import STATE_NAME, ensure_private_dir, parse_segment_name, segment_dir
from .reader import SegmentReader
from .records import MetricRecords, SampleRows, SegmentTotals
from .state import FleetState

__all__ = ["FleetBatch", "FleetReader", "WorkerInfo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerInfo:
    """One worker's segment as the control plane sees it.

    Attributes
    ----------
    name
        The segment file name (``worker-<pid>-<start ticks>-<id>.seg``).
    pid
        The worker's process id.
    alive
        A process still holds the segment's lock (False proves the worker is gone).
    closed
        The worker closed the segment (a clean exit, as opposed to a crash).
    records, samples
        Metric records and samples it published.
    unread_records, unread_samples
        Of those, not read by this reader yet (still in the rings, or lost).
    lost_records, lost_samples
        Overwritten before this reader got to them.
    created
        When the segment was created (seconds since the epoch).
    last_record_ns
        When it recorded its newest request (``CLOCK_MONOTONIC`` ns, as ``time.monotonic_ns()``;
        0 if none): its last sign of activity. Liveness itself is the kernel's lock, not a clock.
    """

    name: str
    pid: int
    alive: bool
    closed: bool
    records: int
    samples: int
    unread_records: int
    unread_samples: int
    lost_records: int
    lost_samples: int
    created: float
    last_record_ns: int


@dataclass(frozen=True)
class FleetBatch:
    """What :meth:`FleetReader.read_new` found, per worker (segment file name); ``segment_ids``:
    each of those segments' id (what :attr:`SampleRows.worker` names a request's worker by).
    """

    metrics: dict[str, MetricRecords]
    samples: dict[str, SampleRows]
    segment_ids: dict[str, int] = field(default_factory=dict)

    def all_metrics(self) -> MetricRecords:
        """Every worker's records end to end."""
        return MetricRecords.concat(list(self.metrics.values()))

    def all_samples(self) -> SampleRows | None:
        """Every worker's samples end to end (None if there are no workers); ValueError when
        workers have different shapes.
        """
        return SampleRows.concat(list(self.samples.values())) if self.samples else None


class FleetReader:
    """Reads the shared-memory segments of every worker of ``home``.

    Parameters
    ----------
    home
        The Vortex home (its segments are in :func:`vortex.shm.location.segment_dir`).
    resume
        Start every segment at the cursors the last :meth:`commit` saved (default); False
        starts at the oldest records the rings hold and ignores the saved state (it is still
        replaced at the next commit).

    Attributes
    ----------
    directory
        The segment directory.
    problems
        Segment file name -> the error that made this reader skip it (a damaged segment; a
        dead one is renamed to ``<name>.corrupt`` and kept for inspection).

    Raises
    ------
    vortex.errors.CorruptFileError
        The saved state (``fleet-state.json``) is damaged.

    Notes
    -----
    Use one FleetReader from one thread at a time (the control plane's loop); any number of
    them may read the same home, but only the control plane commits.
    """

    def __init__(self, home: str | os.PathLike[str], *, resume: bool = True) -> None:
        self.directory: Path = segment_dir(home)
        self._state_path = self.directory / STATE_NAME
        self._state = FleetState.load(self._state_path) if resume else FleetState()
        self._readers: dict[str, SegmentReader] = {}
        self._keys: dict[str, tuple[int, int]] = {}
        self.problems: dict[str, Exception] = {}
        self.refresh()

    # -- discovery -------------------------------------------------------------------------

    def refresh(self) -> None:
        """Open the segments of workers that appeared since the last call."""
        if not ensure_private_dir(self.directory, create=False):
            return  # no worker has started yet
        for name in sorted(os.listdir(self.directory)):
            if name in self._readers or name in self.problems or parse_segment_name(name) is None:
                continue
            self._open(name)

    def _open(self, name: str) -> None:
        path = self.directory / name
        try:
            reader = SegmentReader(path)
            st = os.stat(path)
        except FileNotFoundError:  # folded and removed by another reader meanwhile
            return
        except CorruptFileError as exc:
            self._set_aside(name, exc)
            return
        if not reader.matches_name():
            reader.close()
            self._set_aside(name, CorruptFileError(path, "its header names another writer than its file name"))
            return
        if self._state.folded.get(name) == reader.segment_id:
            # Folded by a commit that was interrupted before it removed the file.
            if reader.lock_exclusive():
                _unlink_if_same(path, (st.st_dev, st.st_ino))
            reader.close()
            return
        saved = self._state.cursors.get(name)
        if saved is not None and saved[0] == reader.segment_id:
            reader.metric_cursor, reader.sample_cursor = saved[1], saved[2]
        self._readers[name] = reader
        self._keys[name] = (st.st_dev, st.st_ino)

    def _set_aside(self, name: str, exc: Exception) -> None:
        """Skip a damaged segment from now on; a dead one is renamed ``<name>.corrupt``."""
        logger.error("shared-memory segment skipped: %s", exc)
        self.problems[name] = exc
        reader = self._readers.pop(name, None)
        self._keys.pop(name, None)
        if reader is not None:
            reader.close()
        _rename_if_dead(self.directory / name, name + ".corrupt")

    # -- reading ---------------------------------------------------------------------------

    def read_new(self, max_per_worker: int | None = None) -> FleetBatch:
        """Every metric record and sample written since the cursors, per worker.

        Dead workers are read to their last complete record. A segment found damaged is
        skipped from then on (see :attr:`problems`); the others are unaffected.
        """
        self.refresh()
        metrics: dict[str, MetricRecords] = {}
        samples: dict[str, SampleRows] = {}
        for name, reader in list(self._readers.items()):
            try:
                reader.alive()  # a worker that just died is checked whole before its last read
                metrics[name] = reader.read_metrics(max_per_worker)
                samples[name] = reader.read_samples(max_per_worker)
            except CorruptFileError as exc:
                metrics.pop(name, None)
                self._set_aside(name, exc)
        return FleetBatch(metrics, samples, {name: self._readers[name].segment_id for name in metrics})

    def totals(self) -> SegmentTotals:
        """Everything every worker counted: the folded workers' totals plus every open
        segment's (see :class:`vortex.shm.SegmentTotals` for the precision while they run).
        """
        total = self._state.retired
        for name, reader in list(self._readers.items()):
            try:
                total = total + reader.totals()
            except CorruptFileError as exc:
                self._set_aside(name, exc)
        return total

    def histograms(self) -> tuple[LogHistogram, LogHistogram]:
        """Merged ``(latency in seconds, confidence)`` histograms over every worker, present and
        folded: counters that only ever grow, as Prometheus expects.
        """
        t = self.totals()
        return t.latency, t.confidence

    def workers(self) -> list[WorkerInfo]:
        """The workers whose segments are open, alive or dead, by file name."""
        out = []
        for name, r in sorted(self._readers.items()):
            try:
                alive = r.alive()
            except CorruptFileError as exc:
                self._set_aside(name, exc)
                continue
            totals = r.totals()  # final once it is gone: with a completed, unpublished record
            records, samples = totals.records, totals.samples
            out.append(WorkerInfo(name, r.pid, alive, r.counters()[2], records, samples,
                                  max(0, records - r.metric_cursor), max(0, samples - r.sample_cursor),
                                  r.lost_records, r.lost_samples, r.created, totals.newest_ns))
        return out

    @property
    def retired_workers(self) -> int:
        """Workers folded into the state so far (by this reader or its predecessors)."""
        return self._state.retired_workers

    # -- committing ------------------------------------------------------------------------

    def commit(self) -> list[str]:
        """Persist the cursors; fold and remove the segments of dead workers read to the end.

        Call it after the records :meth:`read_new` returned are safe (consumed or spooled).
        Only the control plane should commit (one per home: the role lock elects it). Returns
        the names of the segments removed.
        """
        remove_orphan_temps(self.directory)
        folding = []
        for name, reader in list(self._readers.items()):
            try:
                if reader.at_end() and reader.lock_exclusive():  # the lock: no other reader folds it
                    folding.append(name)
            except CorruptFileError as exc:
                self._set_aside(name, exc)
        state = self._state
        retired = state.retired
        for name in folding:
            retired = retired + self._readers[name].totals()
        new = FleetState(
            cursors={name: (r.segment_id, r.metric_cursor, r.sample_cursor)
                     for name, r in self._readers.items() if name not in folding},
            retired=retired,
            retired_workers=state.retired_workers + len(folding),
            folded={**{n: i for n, i in state.folded.items() if (self.directory / n).exists()},
                    **{name: self._readers[name].segment_id for name in folding}})
        ensure_private_dir(self.directory, create=True)
        new.save(self._state_path)
        self._state = new
        for name in folding:
            self._remove(name)
        return folding

    def _remove(self, name: str) -> None:
        """Unlink a folded segment and forget it."""
        _unlink_if_same(self.directory / name, self._keys.pop(name))
        self._readers.pop(name).close()

    def close(self) -> None:
        """Unmap every segment (nothing is committed)."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self._keys.clear()

    def __enter__(self) -> FleetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rename_if_dead(path: Path, new_name: str) -> None:
    """Rename a segment whose writer is gone (its lock is free); leave a live one alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(path, path.with_name(new_name))
    except OSError:  # locked: a live writer; or the rename failed: it stays skipped
        pass
    finally:
        os.close(fd)


def _unlink_if_same(path: Path, key: tuple[int, int]) -> None:
    """Unlink ``path`` if it still is the file (device, inode) this reader mapped."""
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == key:
            os.unlink(path)
    except FileNotFoundError:
        pass
