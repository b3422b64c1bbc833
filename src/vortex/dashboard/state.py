"""What the dashboard shows, read from a Vortex home on disk: :class:`HomeView`.

Everything comes from the files a service leaves under its home (so the dashboard works beside
a running service, in another process, or after it stopped):

* the model registry (versions, their validation figures, the serving log),
* ``runs.json`` (training runs), the proposals and the audit log (and whether its chain
  verifies), the degraded record, the persisted sample buffer,
* the status the control plane of a served home publishes (``control.json``, see
  :mod:`vortex.serving.control`): the in-memory figures of its detector, tracker and trainer,
* the serving workers' shared-memory segments (:class:`vortex.shm.FleetReader`), read without
  ever committing, so the control plane's cursors are untouched: request rate, latency
  percentiles, confidence, prediction error and label coverage over the last minute.

A process that embeds the dashboard beside its own :class:`vortex.Orchestrator` (``vortex demo
--dashboard``, a service mounting it) may also hand in ``live``: a callable returning
``system_status().to_dict()``: the in-memory figures (per mode, per flux position, weaknesses
that led to no proposal, triggers) of a service that publishes no ``control.json``.

A classifier's prediction error is ``1 - p(label)``; the accuracy figures read from disk count a
request correct when ``p(label) > 0.5`` (error below 0.5), which implies the top class was the
label. The live figures (``live``) count the top class itself.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..home import HomeLayout

__all__ = ["HomeView", "LiveStatus"]

#: Returns ``Orchestrator.system_status().to_dict()`` of a service in this process.
LiveStatus = Callable[[], dict[str, Any]]

_WINDOW_SECS = 60.0  # the header's figures cover the requests of the last minute
_HISTORY = 1800  # chart points kept (one per refresh)
_AUDIT_TAIL = 30
_MARKER_EVENTS = {"proposal_applied": "applied", "proposal_rolled_back": "rolled back",
                  "auto_rollback": "rolled back", "model_swapped": "swap"}


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _error_figures(errors: Any) -> dict[str, Any]:
    """Mean prediction error, accuracy (error < 0.5) and label coverage of a float array."""
    import numpy as np

    n = int(errors.size)
    labelled = errors[~np.isnan(errors)]
    k = int(labelled.size)
    return {"error_rate": float(labelled.mean()) if k else None,
            "accuracy": float((labelled < 0.5).mean()) if k else None,
            "label_coverage": k / n if n else None, "labelled": k}


class _FleetWindow:
    """The workers' metric records and labelled samples of the last minute, read from shared
    memory without committing (the control plane's cursors are not this reader's).

    A request's feedback reaches the segments as a labelled sample (its error), pushed by
    whichever worker received it; a worker that records the error with the request itself
    leaves it in the metric record. The error figures come from the samples when there are any.
    """

    def __init__(self, home: str) -> None:
        self.home = home
        self._fleet: Any = None
        self._records: collections.deque = collections.deque()  # (t_ns, latency, confidence, error)
        self._labels: collections.deque = collections.deque()  # (unix time, error) of samples
        self.problem: str | None = None

    def poll(self) -> dict[str, Any] | None:
        """Figures of the fleet (None when no worker ever wrote a segment for this home)."""
        import numpy as np

        from ..shm import FleetReader

        try:
            if self._fleet is None:
                self._fleet = FleetReader(self.home, resume=False)
            batch = self._fleet.read_new()
            workers = self._fleet.workers()
            totals = self._fleet.totals()
        except (OSError, ValueError) as exc:  # CorruptFileError is a ValueError
            self.problem = str(exc)
            return None
        if not workers and not totals.records:
            return None
        now_ns, now = time.monotonic_ns(), time.time()
        new = batch.all_metrics()
        for i in range(len(new)):
            self._records.append((int(new.t_ns[i]), float(new.latency_ms[i]),
                                  float(new.confidence[i]), float(new.error[i])))
        for rows in batch.samples.values():  # each labelled sample is one request's feedback
            self._labels.extend(zip(rows.timestamp.tolist(), rows.error.tolist(), strict=True))
        cutoff = now_ns - int(_WINDOW_SECS * 1e9)
        while self._records and self._records[0][0] < cutoff:
            self._records.popleft()
        while self._labels and self._labels[0][0] < now - _WINDOW_SECS:
            self._labels.popleft()
        out: dict[str, Any] = {
            "workers": [{"pid": w.pid, "alive": w.alive, "records": w.records, "samples": w.samples}
                        for w in workers],
            "total_inferences": totals.records, "samples": totals.samples,
            "mean_latency_ms": totals.latency.total * 1000 / totals.records if totals.records else None,
            "problems": {k: str(v) for k, v in self._fleet.problems.items()}}
        if self._records:
            rec = np.array(self._records, dtype=np.float64)
            span = max((now_ns - rec[0, 0]) / 1e9, 1.0)
            out.update(requests_per_sec=len(rec) / span,
                       p50_latency_ms=float(np.percentile(rec[:, 1], 50)),
                       p99_latency_ms=float(np.percentile(rec[:, 1], 99)),
                       mean_confidence=float(rec[:, 2].mean()), **_error_figures(rec[:, 3]))
            if self._labels:  # feedback arrives as samples (a served home's workers)
                errors = np.array([e for _, e in self._labels], dtype=np.float64)
                out.update(_error_figures(errors), label_coverage=min(1.0, len(errors) / len(rec)))
        return out

    def close(self) -> None:
        """Unmap the segments read so far (a later :meth:`poll` maps them again)."""
        if self._fleet is not None:
            self._fleet.close()
            self._fleet = None


class HomeView:
    """Reads a home for the dashboard; one per app (it keeps the chart's history).

    Parameters
    ----------
    home
        The Vortex home (it must exist; nothing is created under it by reading).
    live
        Optional :data:`LiveStatus` of a service running in this process.
    registry, storage_options
        The model registry to show when it is not the home's own (:func:`vortex.status.open_registry`).
    """

    def __init__(self, home: str | os.PathLike[str], live: LiveStatus | None = None,
                 registry: str | None = None, storage_options: Mapping[str, Any] | None = None) -> None:
        self.home = os.fspath(home)
        self.layout = HomeLayout(self.home)
        self.live = live
        self.registry, self.storage_options = registry, dict(storage_options or {})
        self._fleet = _FleetWindow(self.home)
        self._history: collections.deque = collections.deque(maxlen=_HISTORY)
        self._last_live: tuple[float, int] | None = None
        self._store: Any = None
        self._cache: dict[str, tuple[tuple[Any, ...], Any]] = {}  # name -> (file keys, value)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Release the shared-memory mappings the view holds (reading again maps them again)."""
        with self._lock:
            self._fleet.close()

    # ------------------------------------------------------------------ the whole page
    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, JSON-ready. A damaged file shows as a ``problems`` entry
        naming it; the rest of the page still shows.
        """
        with self._lock:
            problems: list[str] = []

            def read(what: str, fn: Callable[[], Any], default: Any = None) -> Any:
                try:
                    return fn()
                except (OSError, ValueError) as exc:  # VortexError corruption is a ValueError
                    problems.append(f"{what}: {exc}")
                    return default

            now = time.time()
            models = read("model registry", self._models)
            runs = read("training runs", self._runs, [])
            proposals, corrupt = read("proposals", self._proposals, ([], []))
            problems.extend(f"proposals: {e}" for e in corrupt)
            audit = read("audit log", self._audit)
            degraded = read("degraded record", self._degraded)
            buffer = read("sample buffer", self._buffer)
            fleet = self._fleet.poll()
            if self._fleet.problem:
                problems.append(f"shared memory: {self._fleet.problem}")
            if self.live is not None:
                live, source = read("live status", self.live), "this process's service"
            else:
                live, source = read("control plane status", self._control), "the control plane's status"
            header = self._header(now, models, fleet, live, source, degraded)
            self._history.append({"t": now, **{k: header.get(k) for k in
                                               ("p99_latency_ms", "mean_confidence", "error_rate",
                                                "accuracy")}})
            weaknesses = self._weaknesses(proposals, audit, live)
            if models is not None:
                for v in models["versions"]:
                    v["live_accuracy"] = _since(buffer, v.get("served_since"), v.get("served_until"))
            return {
                "home": os.path.abspath(self.home), "time": now, "header": header,
                "series": {"live": list(self._history), "buffer": (buffer or {}).get("series", [])},
                "markers": self._markers(models, audit, weaknesses),
                "weaknesses": weaknesses, "proposals": proposals, "models": models,
                "runs": runs[-20:], "audit": audit, "degraded": degraded, "fleet": fleet,
                "metrics": self._unified(fleet, live, buffer, models, runs, proposals, weaknesses, audit),
                "live_attached": live is not None, "problems": problems,
            }

    # ------------------------------------------------------------------ readers
    def _models(self) -> dict[str, Any] | None:
        from ..status import open_registry

        reg = open_registry(self.home, self.registry, self.storage_options)
        if reg is None:
            return None
        versions = reg.list_versions()
        log = reg.serving_log()
        served: dict[int, list[float | None]] = {}
        for i, e in enumerate(log):  # each version's most recent serving span
            until = log[i + 1]["time"] if i + 1 < len(log) else None
            served[e["to_version"]] = [e["time"], until]
        for v in versions:
            span = served.get(v["version"])
            v["served_since"], v["served_until"] = span if span else (None, None)
        accs = [a for a in (_finite(v.get("val_accuracy")) for v in versions) if a is not None]
        previous = log[-1]["from_version"] if log else None
        return {"active_version": reg.active_version, "versions": versions, "serving_log": log,
                "swaps": len(log), "best_val_accuracy": max(accs) if accs else None,
                "rollback_to": previous}

    def _runs(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.layout.runs_file):
            return []
        from ..status import _read_runs

        return _read_runs(self.layout.runs_file)

    def _proposals(self) -> tuple[list[dict[str, Any]], list[Exception]]:
        """Every readable proposal, and the errors of the damaged files."""
        if not os.path.isdir(self.layout.proposals):
            return [], []
        from ..rsi.proposal import ProposalStore

        if self._store is None:  # one store: it re-reads only the files that changed
            self._store = ProposalStore(self.home)
        out = []
        for p in self._store.list():
            tr = p.test_result or {}
            out.append({
                "id": p.id, "status": p.status.value, "risk": p.risk.value,
                "risk_reasons": list(p.risk_reasons), "description": p.description,
                "proposer": p.proposer, "weakness": p.weakness.to_dict(), "diff": p.diff,
                "created_at": p.created_at, "updated_at": p.updated_at, "approver": p.approver,
                "history": p.history, "expected_improvement": p.expected_improvement,
                "test": None if not tr else {
                    k: tr.get(k) for k in ("passed", "tests_run", "tests_passed", "tests_failed",
                                           "baseline_tests", "metric", "performance_delta",
                                           "delta_interval", "confidence_level", "benchmark_runs",
                                           "improved", "isolated", "isolation", "errored",
                                           "errors", "duration_secs")}})
        return out, self._store.corrupt()

    def _cached(self, name: str, paths: tuple[str, ...], read: Callable[[], Any]) -> Any:
        """``read()``, again only once one of ``paths`` changed (the page polls every second;
        the sample buffer and the audit log are rewritten or appended far less often).
        """
        from .._io import file_key

        key = tuple(file_key(p) for p in paths)
        hit = self._cache.get(name)
        if hit is None or hit[0] != key:
            hit = self._cache[name] = (key, read())
        return hit[1]

    def _audit(self) -> dict[str, Any] | None:
        return self._cached("audit", (self.layout.audit, self.layout.audit_head), self._read_audit)

    def _read_audit(self) -> dict[str, Any] | None:
        if not os.path.exists(self.layout.audit):
            return None
        from ..rsi.audit import AuditLog

        log = AuditLog(self.layout.audit, self.layout.audit_head)
        verification = log.verify().to_dict()
        entries = log.entries()
        return {"verification": verification, "entries": len(entries),
                "tail": entries[-_AUDIT_TAIL:],
                "events": [{"ts": e["ts"], "event": e["event"], "data": e["data"]}
                           for e in entries if e["event"] in _MARKER_EVENTS or e["event"] == "cycle"]}

    def _control(self) -> dict[str, Any] | None:
        """The status a served home's control plane publishes (``Orchestrator.system_status``
        plus ``control`` and ``workers``; see :mod:`vortex.serving.control`), or None.
        """
        import json

        from ..errors import CorruptFileError
        from ..serving.control import want_status

        path = self.layout.control_status
        want_status(self.layout.root)
        try:
            with open(path, encoding="utf-8") as f:
                status = json.load(f)
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptFileError(path, f"not valid JSON ({exc})",
                                   remedy="the control plane rewrites it every half second") from None
        if not isinstance(status, dict):
            raise CorruptFileError(path, "not a status object",
                                   remedy="the control plane rewrites it every half second")
        return status

    def _degraded(self) -> dict[str, Any] | None:
        from ..degraded import read_record

        return read_record(self.home)

    def _buffer(self) -> dict[str, Any] | None:
        """The persisted samples: their count, flux-position success and, per time bucket,
        confidence, error and accuracy (the chart's past where no dashboard was watching).
        """
        return self._cached("buffer", (self.layout.buffer,), self._read_buffer)

    def _read_buffer(self) -> dict[str, Any] | None:
        if not os.path.exists(self.layout.buffer):
            return None
        import numpy as np

        from ..training.buffer import Snapshot

        snap = Snapshot.read_ipc(self.layout.buffer)
        n = len(snap)
        if not n:
            return {"samples": 0, "series": [], "sacred_success_rate": None}
        t = np.asarray(snap.timestamp, dtype=np.float64)
        err = np.asarray(snap.error, dtype=np.float64)
        conf = np.asarray(snap.confidence, dtype=np.float64)
        seq = np.asarray(snap.seq, dtype=np.int64)
        sacred = np.isin(1 + seq % 9, (3, 6, 9)) & ~np.isnan(err)
        order = np.argsort(t, kind="stable")
        t, err, conf = t[order], err[order], conf[order]
        buckets = max(1, min(120, n // 25))
        series = []
        for idx in np.array_split(np.arange(n), buckets):
            if idx.size:
                series.append({"t": float(t[idx].mean()), "mean_confidence": float(conf[idx].mean()),
                               **_error_figures(err[idx])})
        return {"samples": n, "series": series, "t": t, "error": err,
                "sacred_success_rate": float((err[sacred] < 0.5).mean()) if sacred.any() else None}

    # ------------------------------------------------------------------ derived
    def _header(self, now: float, models: dict[str, Any] | None, fleet: dict[str, Any] | None,
                live: dict[str, Any] | None, source: str,
                degraded: dict[str, Any] | None) -> dict[str, Any]:
        h: dict[str, Any] = {"serving_version": models["active_version"] if models else None,
                             "source": None}
        if fleet and "requests_per_sec" in fleet:
            h.update({k: fleet.get(k) for k in ("requests_per_sec", "p50_latency_ms", "p99_latency_ms",
                                                "mean_confidence", "error_rate", "accuracy",
                                                "label_coverage")})
            h["source"] = "shared memory (last minute)"
        elif live:
            perf = live.get("performance") or {}
            modes = perf.get("modes") or {}
            total = perf.get("total_inferences") or 0
            mode = max(modes.values(), key=lambda m: m.get("count") or 0) if modes else {}
            rate = None
            if self._last_live is not None and now > self._last_live[0]:
                rate = (total - self._last_live[1]) / (now - self._last_live[0])
            self._last_live = (now, total)
            runtime = live.get("runtime") or {}
            h.update(requests_per_sec=rate, p50_latency_ms=mode.get("p50_latency_ms"),
                     p99_latency_ms=mode.get("p99_latency_ms"),
                     mean_confidence=mode.get("recent_mean_confidence", mode.get("mean_confidence")),
                     error_rate=_finite(runtime.get("recent_prediction_error")),
                     accuracy=perf.get("success_rate"),
                     label_coverage=(perf.get("total_outcomes") or 0) / total if total else None)
            h["source"] = source
        h["control_plane"] = _control_plane(now, fleet, live, self.live is not None, degraded)
        return h

    def _weaknesses(self, proposals: list[dict[str, Any]], audit: dict[str, Any] | None,
                    live: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Each weakness once, with the proposals it led to: those recorded with a proposal,
        those the audit log's cycles name, and (live) the detector's recent ones.
        """
        found: dict[tuple[str, float], dict[str, Any]] = {}

        def add(w: dict[str, Any], proposal: str | None = None) -> None:
            key = (str(w.get("type")), round(float(w.get("detected_at") or 0.0), 3))
            entry = found.setdefault(key, {**w, "proposals": []})
            if proposal and proposal not in entry["proposals"]:
                entry["proposals"].append(proposal)

        for p in proposals:
            add(p["weakness"], p["id"])
        for w in (live or {}).get("weaknesses") or []:
            add(w)
        return sorted(found.values(), key=lambda w: w.get("detected_at") or 0.0, reverse=True)

    def _markers(self, models: dict[str, Any] | None, audit: dict[str, Any] | None,
                 weaknesses: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [{"t": w["detected_at"], "kind": "weakness", "text": f"{w.get('type')}: "
                f"{w.get('description', '')}"} for w in weaknesses if _finite(w.get("detected_at"))]
        for e in (audit or {}).get("events", []):
            kind = _MARKER_EVENTS.get(e["event"])
            if kind and kind != "swap":
                out.append({"t": e["ts"], "kind": kind, "text": f"proposal {e['data'].get('id')} {kind}"})
        for e in (models or {}).get("serving_log", []):
            out.append({"t": e["time"], "kind": "swap",
                        "text": f"v{e['from_version']} -> v{e['to_version']} ({e['reason']})"})
        return sorted(out, key=lambda m: m["t"])

    def _unified(self, fleet: dict[str, Any] | None, live: dict[str, Any] | None,
                 buffer: dict[str, Any] | None, models: dict[str, Any] | None,
                 runs: list[dict[str, Any]], proposals: list[dict[str, Any]],
                 weaknesses: list[dict[str, Any]], audit: dict[str, Any] | None) -> dict[str, Any]:
        """The seed's "unified metrics", each with the source it was read from."""
        perf = (live or {}).get("performance") or {}
        runtime = (live or {}).get("runtime") or {}
        statuses = collections.Counter(p["status"] for p in proposals)
        ever_applied = [p for p in proposals if any(h[1] == "applied" for h in p["history"])]
        deltas = [d for d in (_finite((p["test"] or {}).get("performance_delta")) for p in ever_applied)
                  if d is not None]
        modes = {m: {"count": v.get("count"), "mean_latency_ms": v.get("mean_latency_ms"),
                     "mean_confidence": v.get("mean_confidence")}
                 for m, v in (perf.get("modes") or {}).items()}
        if not modes and fleet:
            modes = {"all modes (shared memory)": {"count": fleet["total_inferences"],
                                                   "mean_latency_ms": fleet["mean_latency_ms"],
                                                   "mean_confidence": fleet.get("mean_confidence")}}
        cycles = sum(1 for e in (audit or {}).get("events", []) if e["event"] == "cycle")
        trained = [r for r in runs if r.get("train_loss") is not None]
        return {
            "inference": {
                "total_inferences": perf.get("total_inferences",
                                             fleet["total_inferences"] if fleet else None),
                "modes": modes,
                "sacred_success_rate": perf.get("sacred_success_rate",
                                                (buffer or {}).get("sacred_success_rate")),
            },
            "detection": {
                "samples_collected": runtime.get("total_samples",
                                                 fleet["samples"] if fleet else (buffer or {}).get("samples")),
                "weaknesses_detected": sum((runtime.get("weaknesses_detected") or {}).values())
                if runtime else len(weaknesses),
                "rsi_triggers": runtime.get("triggers_emitted", cycles),
            },
            "rsi": {
                "proposals_generated": len(proposals), "applied": statuses.get("applied", 0),
                "rolled_back": statuses.get("rolled_back", 0),
                "rejected": statuses.get("rejected", 0), "errored": statuses.get("errored", 0),
                "queued": statuses.get("proposed", 0),
                "applied_ever": len(ever_applied),
                "measured_improvement": [{"id": p["id"], "metric": (p["test"] or {}).get("metric"),
                                          "delta": (p["test"] or {}).get("performance_delta"),
                                          "interval": (p["test"] or {}).get("delta_interval")}
                                         for p in ever_applied],
                "mean_measured_delta": sum(deltas) / len(deltas) if deltas else None,
            },
            "training": {
                "training_runs": len(runs),
                "samples_trained": sum(int(r.get("train_samples") or 0) for r in trained),
                "current_version": (models or {}).get("active_version"),
                "swaps": (models or {}).get("swaps", 0),
                "best_val_accuracy": (models or {}).get("best_val_accuracy"),
            },
        }


def _since(buffer: dict[str, Any] | None, start: float | None, end: float | None) -> dict[str, Any] | None:
    """Accuracy of the persisted samples labelled while a version served."""
    if not buffer or start is None or "t" not in buffer:
        return None
    t, err = buffer["t"], buffer["error"]
    mask = (t >= start) & (t < (end if end is not None else math.inf))
    figures = _error_figures(err[mask])
    return {"accuracy": figures["accuracy"], "samples": figures["labelled"]}


def _control_plane(now: float, fleet: dict[str, Any] | None, live: dict[str, Any] | None,
                   in_process: bool, degraded: dict[str, Any] | None) -> str:
    """A sentence on who runs the home now."""
    if in_process:
        return "running in this process"
    if live is not None and isinstance(live.get("control"), dict) \
            and isinstance(live["control"].get("pid"), int):
        from .._io import pid_alive

        pid, age = live["control"]["pid"], now - (_finite(live.get("timestamp")) or now)
        return (f"process {pid} {'running' if pid_alive(pid) else 'gone'}, "
                f"its status published {age:.0f} s ago")
    if fleet and any(w["alive"] for w in fleet["workers"]):
        n = sum(w["alive"] for w in fleet["workers"])
        return f"{n} serving worker(s) alive"
    if degraded is not None:
        return (f"process {degraded['pid']} running" if degraded["process_running"]
                else f"stopped (last process {degraded['pid']} is gone)")
    return "no service has run on this home"
