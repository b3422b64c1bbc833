"""What the machines that do not hold the control plane record: spooled, then merged.

With ``ServiceSpec.fleet_url`` set, each machine's control-plane lock holder either holds the
fleet's lease and runs the control plane, or runs a :class:`SpoolWriter` (docs/DISTRIBUTED.md):

* **The spool writer** drains the machine's shared-memory segments (``FleetReader``, as the
  control plane's pump does). It appends the labelled samples to a local
  :class:`~vortex.training.SampleBuffer` and the request records (wall-clock time, latency,
  confidence, error, answering version) to a :class:`~vortex.serving.record_spool.RecordSpool`,
  each numbered per replica by its own ``seq``. Every ``spool_interval_secs`` it saves both
  whole, to ``<fleet_url>/spool/<replica>.arrow`` and ``<fleet_url>/spool/records/<replica>.arrow``;
  only then does it commit the fleet's cursors (the control plane's rule: what the cursors
  skip is durable). Each spool object also records, per segment, the next sample seq (record
  index) it holds, so a writer killed between the save and the commit skips, on restart, what
  it re-reads from the segments: a sample or a record enters its spool once.
* **The merger** (:class:`SpoolMerger`, on the control plane) reads every spool whose ETag
  changed and takes the rows with ``seq`` at or above what it merged from that replica. The
  records, ordered by timestamp, go to the calls the pump feeds this machine's records to
  (:meth:`~vortex.serving.control.ControlPlane.feed_records`: tracker, detector, change board),
  then their watermark ``records/<replica>.merged`` is written. The samples, ordered by
  timestamp, go to its trainer's buffer, which is saved, and only then is ``<replica>.merged``
  written. A watermark is ``{"incarnation", "next_seq"}``, on shared storage so a control plane
  elected elsewhere continues from it. The writer drops the merged rows, so a spool holds what
  is not merged yet. A damaged spool is reported (:class:`~vortex.errors.SnapshotFormatError`,
  naming it) and skipped; the others merge.

Exactly once from a worker's segment to the trainer's buffer and to the detector while the
control plane runs, also across spool writers killed at any point: the next lock holder of a
machine always spools first (skipping what the spools hold, then committing) before it may
run the control plane. At least once across a control plane killed between saving its buffer
and writing the watermarks (the next one merges those rows again; records fed to a detector
that died with it are fed to its successor's), or when a machine takes the lease while its
spool cannot be written (its control plane then reads the uncommitted rows directly). A spool
that is damaged, or overflows (more than its capacity unmerged: the control plane away too
long), loses its oldest rows, which the merger counts.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
import time
import uuid
from typing import Any

import numpy as np

from .._fsspec import filesystem, put_whole
from ..errors import SnapshotFormatError
from .spec import ServiceSpec

__all__ = ["SpoolMerger", "SpoolWriter", "load_spool", "spool_metadata", "spool_root"]

log = logging.getLogger(__name__)

_REPLICA = "vortex.spool.replica"
_INCARNATION = "vortex.spool.incarnation"  # a new spool (the old one damaged) numbers from 0 again
_MARKS = "vortex.spool.marks"              # segment name -> next sample seq (record index) the spool holds
_RECORDS = "records"                        # spool/records/<replica>.arrow: the request records


def spool_root(fleet_url: str) -> str:
    """URL of the fleet's spool directory."""
    return f"{fleet_url.rstrip('/')}/spool"


def spool_metadata(replica: str, incarnation: str, marks: dict[str, int]) -> dict[str, str]:
    """The schema metadata a spool is saved with (see :func:`load_spool`)."""
    return {_REPLICA: replica, _INCARNATION: incarnation, _MARKS: json.dumps(marks)}


def load_spool(url: str, replica: str, storage_options: dict[str, Any], capacity: int | None = None, *,
               load: Any = None) -> tuple[Any, str, dict[str, int]]:
    """``(buffer, incarnation, marks)`` of ``replica``'s spool at ``url`` (a URL or a path):
    a sample spool (a :class:`~vortex.training.SampleBuffer`), or what ``load(url, options)``
    reads (a record spool: :meth:`~vortex.serving.record_spool.RecordSpool.load`).

    Raises
    ------
    SnapshotFormatError
        The object is damaged, not a spool, or another replica's (naming it).
    FileNotFoundError
        There is none.
    """
    from ..training.buffer import SampleBuffer

    if load is None:
        buf = SampleBuffer.load(url, capacity, storage_options=storage_options)
    else:
        buf = load(url, storage_options)
    meta = buf.saved_metadata
    try:
        if meta[_REPLICA] != replica:
            raise ValueError(f"it is replica {meta[_REPLICA]!r}'s spool, not {replica!r}'s")
        marks = json.loads(meta[_MARKS])
        if not (isinstance(marks, dict) and all(isinstance(v, int) for v in marks.values())):
            raise ValueError(f"bad marks {marks!r}")
        return buf, meta[_INCARNATION], marks
    except (KeyError, ValueError) as exc:
        raise SnapshotFormatError(url, f"not a replica spool ({exc})",
                                  remedy="move it aside; its replica starts a new spool") from exc


class _Spool:
    """One spool object of a replica on its writer's side (the samples', or the records'):
    the rows not merged yet, numbered by the buffer's ``seq``; the incarnation; per segment the
    next number (a sample's seq, a record's index) it holds, so that a restarted writer skips
    what it re-reads; and the merger's watermark object, to drop what was merged.
    """

    def __init__(self, replica: str, url: str, ack_url: str, fs: Any, options: dict[str, Any],
                 load: Any, new: Any) -> None:
        self.replica, self.url, self.ack_url, self.fs, self._options = replica, url, ack_url, fs, options
        self._ack_path = filesystem(ack_url, options)[1]
        self.counts = {"spooled": 0, "skipped_duplicates": 0, "saves": 0, "trimmed": 0}
        try:
            self.buffer, self.incarnation, self.marks = load_spool(url, replica, options, load=load)
        except FileNotFoundError:
            self.buffer = None
        except SnapshotFormatError as exc:
            log.error("%s; a new spool starts (its unmerged rows are lost)", exc)
            self.buffer = None
        if self.buffer is None:
            self.buffer, self.incarnation, self.marks = new(), uuid.uuid4().hex, {}
        self.dirty = False

    def fresh(self, segment: str, numbers: np.ndarray) -> np.ndarray:
        """Which of ``segment``'s rows numbered ``numbers`` (ascending) the spool does not hold
        yet; they are held from now on.
        """
        keep = numbers >= self.marks.get(segment, 0)
        self.counts["skipped_duplicates"] += len(numbers) - int(keep.sum())
        self.marks[segment] = int(numbers[-1]) + 1
        self.dirty = True
        return keep

    def forget_other_segments(self, segments: Any) -> None:
        """A segment no longer read (folded after a commit, or set aside) is never read again."""
        self.marks = {name: mark for name, mark in self.marks.items() if name in segments}

    def save(self) -> None:
        """Drop what the merger merged, then save the spool if it changed."""
        self._trim()
        if self.dirty:
            self.buffer.save(self.url, storage_options=self._options,
                             metadata=spool_metadata(self.replica, self.incarnation, self.marks))
            self.dirty = False
            self.counts["saves"] += 1

    def _trim(self) -> None:
        try:
            ack = json.loads(self.fs.cat_file(self._ack_path))
        except FileNotFoundError:
            return
        except ValueError as exc:
            log.warning("%s unreadable (%s): nothing trimmed", self.ack_url, exc)
            return
        if isinstance(ack, dict) and ack.get("incarnation") == self.incarnation:
            dropped = self.buffer.drop_older_than(int(ack.get("next_seq", 0)))
            if dropped:
                self.counts["trimmed"] += dropped
                self.dirty = True


class SpoolWriter:
    """Spools this machine's samples to ``<fleet_url>/spool/<replica>.arrow`` and its request
    records to ``<fleet_url>/spool/records/<replica>.arrow`` (see the module docstring).
    Construct it only while holding the machine's :class:`ControlLock`.

    Parameters
    ----------
    spec
        The service; its ``fleet_url`` must be set.
    capacity
        Samples the spool holds at most (unmerged ones beyond it are lost, and counted).
    records_capacity
        Request records the record spool holds at most (the same).
    poll_interval
        Seconds between two reads of the workers' segments.

    Attributes
    ----------
    counts, record_counts
        Of the sample spool and of the record spool: rows ``spooled``, ``skipped_duplicates``
        (re-read after a restart, held already), ``saves``, ``trimmed`` (dropped as merged).
        What overflows a spool unmerged is counted by the merger (it sees the gap in ``seq``).
    """

    def __init__(self, spec: ServiceSpec, *, capacity: int = 100_000, records_capacity: int = 100_000,
                 poll_interval: float = 0.05) -> None:
        from ..shm import FleetReader
        from ..training.buffer import SampleBuffer
        from .record_spool import RecordSpool

        if spec.fleet_url is None:
            raise ValueError("SpoolWriter needs ServiceSpec.fleet_url")
        self.spec = spec
        self.replica = spec.replica
        root = spool_root(spec.fleet_url)
        self._options = dict(spec.storage_options)
        self.fs, _ = filesystem(root, self._options)
        label = "int64" if spec.n_classes else "float32"
        self.samples = _Spool(self.replica, f"{root}/{self.replica}.arrow", f"{root}/{self.replica}.merged",
                              self.fs, self._options,
                              lambda url, options: SampleBuffer.load(url, capacity, storage_options=options),
                              lambda: SampleBuffer(spec.feature_dim, capacity, label))
        self.records = _Spool(self.replica, f"{root}/{_RECORDS}/{self.replica}.arrow",
                              f"{root}/{_RECORDS}/{self.replica}.merged", self.fs, self._options,
                              lambda url, options: RecordSpool.load(url, records_capacity, storage_options=options),
                              lambda: RecordSpool(records_capacity))
        self.url = self.samples.url
        self.counts = self.samples.counts
        self.record_counts = self.records.counts
        self.poll_interval = poll_interval
        self.fleet = FleetReader(os.path.abspath(spec.home))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def buffer(self) -> Any:
        """The sample spool's :class:`~vortex.training.SampleBuffer`."""
        return self.samples.buffer

    def pump(self) -> int:
        """Append the samples and request records the workers pushed since the last read
        (those the spools do not hold already); returns how many samples were appended.
        """
        batch = self.fleet.read_new()
        samples, records = self.samples, self.records
        n = 0
        for name, rows in batch.samples.items():
            if len(rows):
                fresh = samples.fresh(name, rows.seq)
                k = int(fresh.sum())
                n += k
                if k:
                    self.buffer.extend(rows.features[fresh], rows.labels[fresh], confidences=rows.confidence[fresh],
                                       errors=rows.error[fresh], episodes=rows.episode[fresh],
                                       timestamps=rows.timestamp[fresh])
        # the records' CLOCK_MONOTONIC times as this machine's wall clock: the merger orders
        # the machines' records by it
        to_wall = time.time() - time.monotonic()
        for name, got in batch.metrics.items():
            if len(got):
                fresh = records.fresh(name, got.index)
                records.counts["spooled"] += records.buffer.extend(
                    timestamp=got.t_ns[fresh] * 1e-9 + to_wall, latency_ms=got.latency_ms[fresh],
                    confidence=got.confidence[fresh], error=got.error[fresh], version=got.version[fresh])
        samples.forget_other_segments(batch.samples)
        records.forget_other_segments(batch.metrics)
        samples.counts["spooled"] += n
        return n

    def flush(self) -> None:
        """Drop what the control plane merged, save the spools (those that changed), then
        commit the fleet's cursors (never the other way round).
        """
        self.samples.save()
        self.records.save()
        self.fleet.commit()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Pump every ``poll_interval`` and flush every ``spec.spool_interval_secs`` in a thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vortex-spool", daemon=True)
        self._thread.start()
        log.info("spooling the samples of %s to %s", self.spec.home, self.url)

    def _loop(self) -> None:
        next_flush = 0.0
        while True:
            stopping = self._stop.is_set()
            try:
                self.pump()
                if stopping or time.monotonic() >= next_flush:
                    self.flush()
                    next_flush = time.monotonic() + self.spec.spool_interval_secs
            except Exception:  # the storage unreachable, say: the next pass retries
                log.exception("spool pass failed")
            if stopping:
                return
            self._stop.wait(self.poll_interval)

    def stop(self) -> None:
        """Stop the thread after a last read, save and commit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        self.fleet.close()


class _Merging:
    """The merger's side of one kind of spool (the samples' in ``spool/``, the records' in
    ``spool/records/``): which objects it merged (their ETags), and per replica the watermark
    ``(incarnation, next_seq)`` merged and whether it is written yet.
    """

    def __init__(self, merger: SpoolMerger, url: str, kind: str, load: Any = None) -> None:
        self.merger, self.url, self.kind, self.load = merger, url, kind, load
        self.dir = filesystem(url, merger._options)[1]
        self.etags: dict[str, str] = {}                # spool object -> ETag merged last
        self.merged: dict[str, tuple[str, int]] = {}   # replica -> (incarnation, next_seq) merged
        self.unacked: set[str] = set()                 # replicas whose watermark is not written yet

    def _watermark(self, replica: str) -> tuple[str, int]:
        if replica not in self.merged:
            try:
                ack = json.loads(self.merger.fs.cat_file(posixpath.join(self.dir, f"{replica}.merged")))
                self.merged[replica] = (str(ack["incarnation"]), int(ack["next_seq"]))
            except FileNotFoundError:
                self.merged[replica] = ("", 0)
        return self.merged[replica]

    def collect(self) -> tuple[list[tuple[Any, np.ndarray]], list[tuple[str, str, str, str, int, int]]]:
        """``(parts, taken)``: per spool whose ETag changed, ``(rows, kept)`` (its rows, and which
        are at or above its replica's watermark: not merged yet); ``taken`` goes to
        :meth:`took` once the kept rows are consumed (not when consuming them failed: the next
        merge takes them again).
        """
        merger, fs = self.merger, self.merger.fs
        fs.invalidate_cache(self.dir)
        try:
            entries = fs.ls(self.dir, detail=True)
        except FileNotFoundError:
            return [], []
        parts, taken = [], []
        for info in entries:
            name = posixpath.basename(str(info["name"]).rstrip("/"))
            etag = str(info.get("ETag") or info.get("mtime") or "")
            if not name.endswith(".arrow") or (etag and self.etags.get(name) == etag):
                continue
            replica, url = name[:-len(".arrow")], f"{self.url}/{name}"
            key = f"{self.kind}/{replica}" if self.kind else replica
            try:
                buf, incarnation, _ = load_spool(url, replica, merger._options, load=self.load)
            except FileNotFoundError:
                continue
            except SnapshotFormatError as exc:
                if key not in merger.problems:
                    log.error("spool skipped: %s", exc)
                merger.problems[key] = exc
                continue
            merger.problems.pop(key, None)
            merged_incarnation, done = self._watermark(replica)
            start = done if merged_incarnation == incarnation else 0
            snap = buf.snapshot()
            lost = max(0, int(snap.seq[0]) - start) if len(snap) else 0  # overflowed unmerged
            parts.append((snap, snap.seq >= start))
            taken.append((replica, incarnation, name, etag, buf.next_seq, lost))
        return parts, taken

    def took(self, taken: list[tuple[str, str, str, str, int, int]]) -> None:
        """Record as merged what :meth:`collect` returned (the watermarks still to write)."""
        for replica, incarnation, name, etag, next_seq, lost in taken:
            if lost:
                self.merger.counts[f"{self.kind}_lost" if self.kind else "lost"] += lost
                log.error("%s spool of %s overflowed: %d lost", self.kind or "sample", replica, lost)
            self.merged[replica] = (incarnation, next_seq)
            self.etags[name] = etag
            self.unacked.add(replica)

    def acknowledge(self) -> None:
        """Write the watermarks of what was merged (only once it is safe: see the callers)."""
        for replica in sorted(self.unacked):
            incarnation, next_seq = self.merged[replica]
            put_whole(self.merger.fs, posixpath.join(self.dir, f"{replica}.merged"),
                      json.dumps({"incarnation": incarnation, "next_seq": next_seq}).encode())
        self.unacked.clear()


class SpoolMerger:
    """Merges the replicas' spools: samples into ``trainer``'s buffer, request records into
    ``records`` (see the module docstring).

    Parameters
    ----------
    spec
        The service; its ``fleet_url`` must be set.
    trainer
        The control plane's :class:`~vortex.training.TrainingCoordinator`; None merges no
        samples.
    records
        ``records(latency_ms, confidence, version)``, the columns of the merged request
        records in timestamp order (:meth:`vortex.serving.control.ControlPlane.feed_records`);
        None merges no records.

    Attributes
    ----------
    problems
        Replica (``records/<replica>`` for a record spool) -> the error that made the last
        merge skip its spool (a damaged object).
    counts
        ``merged`` samples, ``lost`` samples (a spool overflowed before they were merged);
        ``records_merged``, ``records_lost``: the same of request records.
    """

    def __init__(self, spec: ServiceSpec, trainer: Any, *, records: Any = None) -> None:
        from .record_spool import RecordSpool

        if spec.fleet_url is None:
            raise ValueError("SpoolMerger needs ServiceSpec.fleet_url")
        self.spec = spec
        self.trainer = trainer
        self.records = records
        self.root = spool_root(spec.fleet_url)
        self._options = dict(spec.storage_options)
        self.fs, _ = filesystem(self.root, self._options)
        self.problems: dict[str, Exception] = {}
        self.counts = {"merged": 0, "lost": 0, "records_merged": 0, "records_lost": 0}
        self._samples = _Merging(self, self.root, "")
        self._records = _Merging(self, f"{self.root}/{_RECORDS}", _RECORDS,
                                 lambda url, options: RecordSpool.load(url, storage_options=options))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def merge(self) -> int:
        """Feed the replicas' new request records to ``records`` (oldest first), then write
        their watermarks; add their new samples to the trainer's buffer (oldest first), save
        it, then write those watermarks. Returns the number of samples added.
        """
        if self.records is not None:
            parts, taken = self._records.collect()
            self._feed(parts)
            self._records.took(taken)
            self._records.acknowledge()  # what was fed lives in this process only: nothing to save first
        if self.trainer is None:
            return 0
        parts, taken = self._samples.collect()
        n = self._add(parts)
        self._samples.took(taken)
        if self._samples.unacked and self.trainer.persist_buffer_covering():
            self._samples.acknowledge()
        return n

    def _feed(self, parts: list[tuple[Any, np.ndarray]]) -> None:
        """The kept records of ``parts``, in timestamp order, to ``records``."""
        if not any(keep.any() for _, keep in parts):
            return
        rows = np.concatenate([snap[keep] for snap, keep in parts])
        rows = rows[np.argsort(rows["timestamp"], kind="stable")]
        self.records(*(np.ascontiguousarray(rows[name]) for name in ("latency_ms", "confidence", "version")))
        self.counts["records_merged"] += len(rows)

    def _add(self, parts: list[tuple[Any, np.ndarray]]) -> int:
        """Append the kept rows of ``parts`` to the trainer's buffer in timestamp order."""
        def column(name: str) -> np.ndarray:
            return np.concatenate([getattr(snap, name)[keep] for snap, keep in parts])

        if not parts or not any(keep.any() for _, keep in parts):
            return 0
        timestamps = column("timestamp")
        order = np.argsort(timestamps, kind="stable")
        self.trainer.add_samples(column("features")[order], column("labels")[order],
                                 confidences=column("confidence")[order], errors=column("error")[order],
                                 episodes=column("episode")[order], timestamps=timestamps[order])
        self.counts["merged"] += len(order)
        return len(order)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Merge every ``spec.spool_interval_secs`` in a thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="vortex-spool-merge", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.merge()
            except Exception:  # the storage unreachable, say: the next pass retries
                log.exception("spool merge failed")
            self._stop.wait(self.spec.spool_interval_secs)

    def stop(self, final: bool = True) -> None:
        """Stop the thread, after a last merge if ``final`` (not when the lease is lost: a
        deposed control plane writes no watermark).
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        if final:
            try:
                self.merge()
            except Exception:
                log.exception("last spool merge failed")
