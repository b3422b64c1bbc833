"""Samples of the machines that do not hold the control plane: spooled, then merged.

With ``ServiceSpec.fleet_url`` set, each machine's control-plane lock holder either holds the
fleet's lease and runs the control plane, or runs a :class:`SpoolWriter` (docs/DISTRIBUTED.md):

* **The spool writer** drains the machine's shared-memory segments (``FleetReader``, as the
  control plane's pump does), appends the labelled samples to a local
  :class:`~vortex.training.SampleBuffer` (numbered per replica by its ``seq``) and, every
  ``spool_interval_secs``, saves it whole to ``<fleet_url>/spool/<replica>.arrow``; only then
  does it commit the fleet's cursors (the control plane's rule: what the cursors skip is
  durable). The spool object also records, per segment, the next sample seq it holds, so a
  writer killed between the save and the commit skips, on restart, what it re-reads from the
  segments: a sample enters the spool once. Metric records are read and dropped: the detector
  sees the control plane's machine only.
* **The merger** (:class:`SpoolMerger`, on the control plane) reads every spool whose ETag
  changed, takes the rows with ``seq`` at or above what it merged from that replica, orders
  them by timestamp, adds them to its trainer's buffer, saves that buffer, and only then writes
  ``<replica>.merged`` (``{"incarnation", "next_seq"}``): its watermark, on shared storage so a
  control plane elected elsewhere continues from it. The writer drops the merged rows from its
  buffer, so a spool holds what is not merged yet. A damaged spool is reported
  (:class:`~vortex.errors.SnapshotFormatError`, naming it) and skipped; the others merge.

Exactly once from a worker's segment to the trainer's buffer while the control plane runs,
also across spool writers killed at any point: the next lock holder of a machine always spools
first (skipping what the spool holds, then committing) before it may run the control plane.
At least once across a control plane killed between saving its buffer and writing the
watermarks (the next one merges those rows again), or when a machine takes the lease while
its spool cannot be written (its control plane then reads the uncommitted samples directly).
A spool that is damaged, or overflows (more than its capacity unmerged: the control plane
away too long), loses samples, which are counted.
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
_MARKS = "vortex.spool.marks"              # segment name -> next sample seq the spool holds


def spool_root(fleet_url: str) -> str:
    """URL of the fleet's spool directory."""
    return f"{fleet_url.rstrip('/')}/spool"


def spool_metadata(replica: str, incarnation: str, marks: dict[str, int]) -> dict[str, str]:
    """The schema metadata a spool is saved with (see :func:`load_spool`)."""
    return {_REPLICA: replica, _INCARNATION: incarnation, _MARKS: json.dumps(marks)}


def load_spool(url: str, replica: str, storage_options: dict[str, Any],
               capacity: int | None = None) -> tuple[Any, str, dict[str, int]]:
    """``(buffer, incarnation, marks)`` of ``replica``'s spool at ``url`` (a URL or a path).

    Raises
    ------
    SnapshotFormatError
        The object is damaged, not a spool, or another replica's (naming it).
    FileNotFoundError
        There is none.
    """
    from ..training.buffer import SampleBuffer

    buf = SampleBuffer.load(url, capacity, storage_options=storage_options)
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


class SpoolWriter:
    """Spools this machine's samples to ``<fleet_url>/spool/<replica>.arrow`` (see the module
    docstring). Construct it only while holding the machine's :class:`ControlLock`.

    Parameters
    ----------
    spec
        The service; its ``fleet_url`` must be set.
    capacity
        Samples the spool holds at most (unmerged ones beyond it are lost, and counted).
    poll_interval
        Seconds between two reads of the workers' segments.
    """

    def __init__(self, spec: ServiceSpec, *, capacity: int = 100_000, poll_interval: float = 0.05) -> None:
        from ..shm import FleetReader
        from ..training.buffer import SampleBuffer

        if spec.fleet_url is None:
            raise ValueError("SpoolWriter needs ServiceSpec.fleet_url")
        self.spec = spec
        self.replica = spec.replica
        root = spool_root(spec.fleet_url)
        self.url = f"{root}/{self.replica}.arrow"
        self._ack_url = f"{root}/{self.replica}.merged"
        self._options = dict(spec.storage_options)
        self.fs, self._ack_path = filesystem(self._ack_url, self._options)
        self.poll_interval = poll_interval
        self.counts = {"spooled": 0, "skipped_duplicates": 0, "saves": 0, "trimmed": 0}
        try:
            self.buffer, self.incarnation, self.marks = load_spool(self.url, self.replica, self._options,
                                                                    capacity)
        except FileNotFoundError:
            self.buffer, self.incarnation, self.marks = None, "", {}
        except SnapshotFormatError as exc:
            log.error("%s; a new spool starts (its unmerged samples are lost)", exc)
            self.buffer, self.incarnation, self.marks = None, "", {}
        if self.buffer is None:
            self.buffer = SampleBuffer(spec.feature_dim, capacity, "int64" if spec.n_classes else "float32")
            self.incarnation = uuid.uuid4().hex
        self.fleet = FleetReader(os.path.abspath(spec.home))
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pump(self) -> int:
        """Append the samples the workers pushed since the last read (those the spool does not
        hold already); returns how many were appended.
        """
        batch = self.fleet.read_new()
        n = 0
        for name, rows in batch.samples.items():
            if not len(rows):
                continue
            fresh = rows.seq >= self.marks.get(name, 0)
            k = int(fresh.sum())
            if k:
                self.buffer.extend(rows.features[fresh], rows.labels[fresh], confidences=rows.confidence[fresh],
                                   errors=rows.error[fresh], episodes=rows.episode[fresh],
                                   timestamps=rows.timestamp[fresh])
            self.counts["skipped_duplicates"] += len(rows) - k
            self.marks[name] = int(rows.seq[-1]) + 1
            self._dirty = True
            n += k
        # a segment no longer read (folded after a commit, or set aside) is never read again
        self.marks = {name: mark for name, mark in self.marks.items() if name in batch.samples}
        self.counts["spooled"] += n
        return n

    def flush(self) -> None:
        """Drop what the control plane merged, save the spool (if it changed), then commit the
        fleet's cursors (never the other way round).
        """
        self._trim()
        if self._dirty:
            self.buffer.save(self.url, storage_options=self._options,
                             metadata=spool_metadata(self.replica, self.incarnation, self.marks))
            self._dirty = False
            self.counts["saves"] += 1
        self.fleet.commit()

    def _trim(self) -> None:
        try:
            ack = json.loads(self.fs.cat_file(self._ack_path))
        except FileNotFoundError:
            return
        except ValueError as exc:
            log.warning("%s unreadable (%s): nothing trimmed", self._ack_url, exc)
            return
        if isinstance(ack, dict) and ack.get("incarnation") == self.incarnation:
            dropped = self.buffer.drop_older_than(int(ack.get("next_seq", 0)))
            if dropped:
                self.counts["trimmed"] += dropped
                self._dirty = True

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


class SpoolMerger:
    """Merges the replicas' spools into ``trainer``'s buffer (see the module docstring).

    Parameters
    ----------
    spec
        The service; its ``fleet_url`` must be set.
    trainer
        The control plane's :class:`~vortex.training.TrainingCoordinator`.

    Attributes
    ----------
    problems
        Replica -> the error that made the last merge skip its spool (a damaged object).
    counts
        ``merged`` rows, ``lost`` rows (a spool overflowed before they were merged).
    """

    def __init__(self, spec: ServiceSpec, trainer: Any) -> None:
        if spec.fleet_url is None:
            raise ValueError("SpoolMerger needs ServiceSpec.fleet_url")
        self.spec = spec
        self.trainer = trainer
        self.root = spool_root(spec.fleet_url)
        self._options = dict(spec.storage_options)
        self.fs, self._dir = filesystem(self.root, self._options)
        self._etags: dict[str, str] = {}                # spool object -> ETag merged last
        self._merged: dict[str, tuple[str, int]] = {}   # replica -> (incarnation, next_seq) merged
        self._unacked: set[str] = set()                 # replicas whose watermark is not written yet
        self.problems: dict[str, Exception] = {}
        self.counts = {"merged": 0, "lost": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watermark(self, replica: str) -> tuple[str, int]:
        if replica not in self._merged:
            try:
                ack = json.loads(self.fs.cat_file(posixpath.join(self._dir, f"{replica}.merged")))
                self._merged[replica] = (str(ack["incarnation"]), int(ack["next_seq"]))
            except FileNotFoundError:
                self._merged[replica] = ("", 0)
        return self._merged[replica]

    def merge(self) -> int:
        """Add the replicas' new samples to the trainer's buffer, oldest first, save it, then
        write the watermarks; returns the number of samples added.
        """
        self.fs.invalidate_cache(self._dir)
        try:
            entries = self.fs.ls(self._dir, detail=True)
        except FileNotFoundError:
            return 0
        parts = []
        for info in entries:
            name = posixpath.basename(str(info["name"]).rstrip("/"))
            etag = str(info.get("ETag") or info.get("mtime") or "")
            if not name.endswith(".arrow") or (etag and self._etags.get(name) == etag):
                continue
            replica, url = name[:-len(".arrow")], f"{self.root}/{name}"
            try:
                buf, incarnation, _ = load_spool(url, replica, self._options)
            except FileNotFoundError:
                continue
            except SnapshotFormatError as exc:
                if replica not in self.problems:
                    log.error("spool skipped: %s", exc)
                self.problems[replica] = exc
                continue
            self.problems.pop(replica, None)
            merged_incarnation, done = self._watermark(replica)
            start = done if merged_incarnation == incarnation else 0
            snap = buf.snapshot()
            if len(snap) and int(snap.seq[0]) > start:
                self.counts["lost"] += int(snap.seq[0]) - start
                log.error("spool of %s overflowed: %d samples lost", replica, int(snap.seq[0]) - start)
            parts.append((snap, snap.seq >= start))
            self._merged[replica] = (incarnation, buf.next_seq)
            self._etags[name] = etag
            self._unacked.add(replica)
        n = self._add(parts)
        if self._unacked and self.trainer.persist_buffer_covering():
            for replica in sorted(self._unacked):
                incarnation, next_seq = self._merged[replica]
                put_whole(self.fs, posixpath.join(self._dir, f"{replica}.merged"),
                          json.dumps({"incarnation": incarnation, "next_seq": next_seq}).encode())
            self._unacked.clear()
        return n

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
