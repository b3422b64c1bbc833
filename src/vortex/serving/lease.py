"""The control plane's lease across machines: :class:`Lease`, an object on shared storage.

On one machine the control plane is elected by a ``flock`` (:class:`~vortex.serving.control.ControlLock`);
machines share no kernel, so across them the role is a *lease*: one small sealed JSON object
(``<url>/control.lease``) that a holder keeps rewriting and that others take over once it stops.

* **Taking it** is a conditional PUT: ``If-None-Match: *`` when there is no lease object,
  ``If-Match: <ETag>`` on the exact object the taker judged expired or released. Of several
  takers at once the storage accepts one; the others' PUTs are refused (HTTP 412).
* **Renewing it** is a conditional PUT on the holder's last ETag every ``renew_secs``; each
  record carries a renewal counter, so every write has new bytes and a new ETag.
* **Expiry is judged on the observer's own monotonic clock, never on wall clocks** (different
  machines' wall clocks differ by any amount; their *rates* differ by parts per million): an
  observer that has seen the same ETag for longer than ``ttl + margin`` seconds since it first
  saw it, measured from the moment the response reached it, takes the lease over.
* **The holder steps down by itself**: its own deadline is ``ttl`` seconds after it *sent* its
  last successful write (monotonic clock); past it, :attr:`Lease.held` is False and the holder
  never writes again with that ETag, even if no one took over (it must contend anew).
* **Fencing**: every record has a number, 1 for the first holder and +1 at every takeover;
  :attr:`Lease.fencing` is the holder's, for writes elsewhere that want to be ordered.

Why two holders never overlap: the holder's write sent at ``t_s`` (its clock) is seen by an
observer at ``t_o >= t_s`` (real time). The holder believes until ``t_s + ttl`` on its clock;
the observer writes no sooner than ``t_o + ttl + margin`` on its clock. Unless the two clocks'
rates differ by more than ``margin / ttl`` (default 10 %), the holder's belief ended first.
What this does *not* cover: a holder paused (SIGSTOP, swap storm) between checking
:attr:`Lease.held` and acting on it acts late; writes that must not come from a deposed holder
are therefore conditional themselves (the registry's are) or carry :attr:`Lease.fencing`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from .._fsspec import conditional_writes, filesystem, precondition_failed, put_whole
from .._io import seal, unseal
from ..errors import CorruptFileError

__all__ = ["LEASE_NAME", "Lease", "LeaseCorruptError", "LeaseRecord"]

log = logging.getLogger(__name__)

#: Name of the lease object under its URL.
LEASE_NAME = "control.lease"


class LeaseCorruptError(CorruptFileError):
    """The lease object is not a lease record (nobody can tell who holds it or its fencing
    number, so nobody takes it over: remove the object to let the replicas elect anew).
    """


@dataclass(frozen=True)
class LeaseRecord:
    """The content of the lease object.

    Attributes
    ----------
    host, pid, token
        Who holds it: host name, process id, and a random token per :class:`Lease` object.
    fencing
        1 for the first holder, +1 at every takeover (kept by renewals).
    renewal
        Writes by this holder so far (makes every write's bytes, hence its ETag, new).
    ttl_secs, margin_secs
        The holder's promise: it stops believing ``ttl_secs`` after sending its last write;
        observers wait ``ttl_secs`` plus the larger of its and their own margin.
    released
        The holder gave the lease up: anyone may take it at once.
    written_at
        Wall-clock time of the write, for people reading the object (expiry never uses it).
    """

    host: str
    pid: int
    token: str
    fencing: int
    renewal: int
    ttl_secs: float
    margin_secs: float
    released: bool = False
    written_at: float = 0.0

    def to_bytes(self) -> bytes:
        """What the object holds: the record as JSON, sealed (sha256, as every Vortex file)."""
        body = json.dumps(asdict(self), sort_keys=True).encode()
        return body + seal(body)

    @classmethod
    def parse(cls, data: bytes, where: str) -> LeaseRecord:
        """The record in ``data``; :class:`LeaseCorruptError` naming ``where`` if it is not one."""
        remedy = "remove the object; the replicas then elect a holder anew"
        body, _ = unseal(data, where, LeaseCorruptError, remedy=remedy)
        try:
            fields = json.loads(bytes(body))
            record = cls(**fields)
            if not (isinstance(record.fencing, int) and record.fencing >= 1 and record.ttl_secs > 0
                    and record.margin_secs >= 0 and isinstance(record.token, str)):
                raise ValueError(f"implausible values {fields}")
            return record
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise LeaseCorruptError(where, f"not a lease record ({exc})", remedy=remedy) from exc

    @property
    def holder(self) -> str:
        """``host:pid`` of the holder."""
        return f"{self.host}:{self.pid}"


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a positive number of seconds")
    return float(value)


class Lease:
    """One contender for the lease at ``<url>/control.lease`` (see the module docstring).

    Parameters
    ----------
    url
        fsspec URL of the shared prefix (``s3://bucket/fleet``); the storage must honour
        conditional writes (S3 and S3-compatible servers do).
    storage_options
        Options of the fsspec filesystem (``endpoint_url``, credentials...).
    ttl_secs
        How long a write keeps the lease: the holder's deadline after its last successful write.
    renew_secs
        Seconds between two renewals (and between two looks at someone else's lease);
        default ``ttl_secs / 4``, so a holder misses three renewals before it steps down.
    margin_secs
        Added to ``ttl_secs`` before an observer takes over: covers the difference between two
        machines' clock rates (default ``ttl_secs / 10``: 10 %, where real clocks differ by
        about 0.01 %).
    clock
        The monotonic clock (tests substitute one).

    Attributes
    ----------
    on_acquired, on_lost
        Optional callbacks: ``on_acquired(fencing)`` after a successful take, ``on_lost(reason)``
        when this contender steps down (called with the lease's lock held, before any write:
        they must not call the lease back).
    lost_reason
        Why it last stepped down (None while it holds the lease).

    Raises
    ------
    ValueError
        A bad duration, ``renew_secs >= ttl_secs``, or a storage without conditional writes.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, ttl_secs: float = 10.0,
                 renew_secs: float | None = None, margin_secs: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_secs = _positive("ttl_secs", ttl_secs)
        self.renew_secs = _positive("renew_secs", renew_secs if renew_secs is not None else ttl_secs / 4)
        if self.renew_secs >= self.ttl_secs:
            raise ValueError(f"renew_secs={renew_secs!r} must be shorter than ttl_secs={ttl_secs!r}")
        self.margin_secs = float(margin_secs) if margin_secs is not None else self.ttl_secs / 10
        if not self.margin_secs >= 0:
            raise ValueError(f"margin_secs={margin_secs!r} must be >= 0")
        self.url = f"{url.rstrip('/')}/{LEASE_NAME}"
        self.fs, self._path = filesystem(self.url, storage_options)
        if not conditional_writes(self.fs):
            raise ValueError(f"{url!r}: a lease needs a storage with conditional writes (S3); "
                             f"{self.fs.protocol!r} has none")
        self._clock = clock
        self.host, self.pid, self.token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
        self._lock = threading.Lock()
        self._held = False
        self._record: LeaseRecord | None = None  # the holder's last written record
        self._etag: str | None = None            # ... and its ETag
        self._deadline = float("-inf")
        self._seen: tuple[str, float] | None = None  # (ETag, when this observer first saw it)
        self.lost_reason: str | None = None
        self.on_acquired: Callable[[int], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state
    @property
    def held(self) -> bool:
        """Whether this contender holds the lease now (False from its deadline on: it steps
        down then, whether or not it could tell the storage).
        """
        with self._lock:
            if self._held and self._clock() >= self._deadline:
                self._step_down("its deadline passed without a successful renewal")
            return self._held

    @property
    def fencing(self) -> int | None:
        """The fencing number of the lease while this contender holds it, else None."""
        return self._record.fencing if self.held and self._record is not None else None

    def _step_down(self, reason: str) -> None:  # called with self._lock held
        self._held = False
        self.lost_reason = reason
        log.warning("control-plane lease %s lost: %s", self.url, reason)
        if self.on_lost is not None:
            self.on_lost(reason)

    # ------------------------------------------------------------------ storage
    def read(self) -> tuple[str, LeaseRecord] | None:
        """``(ETag, record)`` of the lease object now, or None if there is none.

        Raises
        ------
        LeaseCorruptError
            The object is not a lease record.
        """
        self.fs.invalidate_cache(self._path)
        try:
            etag = str(self.fs.info(self._path)["ETag"])
            data = self.fs.cat_file(self._path)
        except FileNotFoundError:
            return None
        # Read between the HEAD and any PUT conditional on that ETag: if the PUT succeeds, the
        # object did not change meanwhile (every record's bytes differ), so these are its bytes.
        return etag, LeaseRecord.parse(data, self.url)

    def _put(self, record: LeaseRecord, **condition: str) -> str | None:
        """Write ``record`` under ``condition``; its ETag, or None if the storage refused."""
        try:
            put_whole(self.fs, self._path, record.to_bytes(), **condition)
        except Exception as exc:
            if isinstance(exc, FileExistsError) or precondition_failed(exc):
                return None
            raise
        seen = self.read()  # the ETag of what this contender wrote (its token says it is)
        return seen[0] if seen is not None and seen[1].token == record.token \
            and seen[1].renewal == record.renewal else None

    def _record_for(self, fencing: int, renewal: int = 0, released: bool = False) -> LeaseRecord:
        return LeaseRecord(self.host, self.pid, self.token, fencing, renewal, self.ttl_secs,
                           self.margin_secs, released, time.time())

    # ------------------------------------------------------------------ operations
    def try_acquire(self) -> bool:
        """Take the lease if there is none, or it is released, or this observer has seen the
        same ETag for longer than its ttl plus margin; True if this contender holds it now.

        Raises
        ------
        LeaseCorruptError
            The lease object is damaged (nobody takes it over).
        """
        if self.held:
            return True
        seen = self.read()
        now = self._clock()  # after the response: the holder wrote this ETag before now
        if seen is None:
            record, condition = self._record_for(1), {"IfNoneMatch": "*"}
        else:
            etag, current = seen
            if self._seen is None or self._seen[0] != etag:
                self._seen = (etag, now)
            waited = now - self._seen[1]
            if not current.released and waited <= current.ttl_secs + max(self.margin_secs, current.margin_secs):
                return False
            record, condition = self._record_for(current.fencing + 1), {"IfMatch": etag}
        sent = self._clock()
        new_etag = self._put(record, **condition)
        if new_etag is None:
            return False
        with self._lock:
            self._held, self._record, self._etag = True, record, new_etag
            self._deadline = sent + self.ttl_secs
            self.lost_reason = None
        log.info("control-plane lease %s taken by %s (fencing %d)", self.url, record.holder, record.fencing)
        if self.on_acquired is not None:
            self.on_acquired(record.fencing)
        return True

    def renew(self) -> bool:
        """Rewrite the lease (``If-Match`` this holder's last ETag) if the deadline has not
        passed; True if this contender still holds it.

        A refused renewal means another contender took it over: this one steps down. A failed
        one (the storage unreachable) keeps the lease until the deadline.
        """
        with self._lock:
            if not self._held or self._record is None or self._etag is None:
                return False
            sent = self._clock()
            if sent >= self._deadline:
                self._step_down("its deadline passed before it could renew")
                return False
            record = replace(self._record, renewal=self._record.renewal + 1, written_at=time.time())
            etag = self._etag
        try:
            new_etag = self._put(record, IfMatch=etag)
            current = None if new_etag is not None else self.read()
        except Exception as exc:  # unreachable storage: keep believing until the deadline
            log.warning("control-plane lease %s not renewed (%s); held until its deadline", self.url, exc)
            return self.held
        with self._lock:
            if not self._held or self._record is None or self._record.token != record.token:
                return False  # stepped down meanwhile (its deadline passed during the PUT)
            if new_etag is not None:
                self._record, self._etag, self._deadline = record, new_etag, sent + self.ttl_secs
                return True
            if current is not None and current[1].token == self.token and current[1].fencing == record.fencing:
                # an earlier renewal whose answer was lost did land: adopt it, deadline unchanged
                self._record, self._etag = current[1], current[0]
                return self._clock() < self._deadline
            who = f"{current[1].holder} (fencing {current[1].fencing})" if current else "nobody (removed)"
            self._step_down(f"taken over by {who}")
            return False

    def release(self) -> None:
        """Give the lease up: step down, then mark the object released (if still ours) so
        another contender takes it at once rather than after the ttl.
        """
        with self._lock:
            if not self._held or self._record is None or self._etag is None:
                return
            within = self._clock() < self._deadline
            record = replace(self._record, renewal=self._record.renewal + 1, released=True,
                             written_at=time.time())
            etag = self._etag
            self._step_down("released")
        if within:  # past the deadline it writes nothing: someone may hold it already
            try:
                self._put(record, IfMatch=etag)
            except Exception as exc:
                log.warning("control-plane lease %s: release not written (%s); it expires", self.url, exc)

    # ------------------------------------------------------------------ keeping it
    def start(self) -> None:
        """Contend and renew in a background thread (every ``renew_secs``) until :meth:`stop`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name="vortex-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._stop.is_set():
            try:
                if self.held:
                    self.renew()
                else:
                    self.try_acquire()
            except Exception:  # a damaged object, the storage down: retry, never give up
                log.exception("control-plane lease %s: attempt failed", self.url)
            self._stop.wait(self.renew_secs)

    def stop(self) -> None:
        """Stop the thread and :meth:`release` the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        self.release()
