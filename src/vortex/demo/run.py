"""``vortex demo``: the whole autonomous loop on scikit-learn's bundled digits.

A small MLP is trained on clean digits and served through the digits service (whose
serving code and tunables Vortex may change). Requests stream in with their labels as
delayed feedback. Part-way, the input distribution drifts: images are displaced by a pixel
and noised. The runtime detector sees confidence and error degrade and triggers the RSI
engine, which proposes a change of the service's tunables, tests it in the sandbox against
the service's own tests and benchmark and applies it; the applied change triggers a
background training run on the buffered (now mostly drifted) samples, the candidate is
validated against the active model on held-out samples and swapped in, and accuracy
recovers. The run prints a timeline and writes ``report.json`` and ``timeline.png``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes
from .stages import DemoEvidence, Served, loop_checklist, tests_phrase

__all__ = ["DemoSettings", "inspect_commands", "run_demo", "service_tree"]

SERVICE_TEMPLATE = Path(__file__).with_name("digits_service")
MODEL_FACTORY = "vortex.training.models:mlp"


def service_tree(home: str | Path) -> Path:
    """Where the demo keeps its copy of the digits service under its home (RSI patches it)."""
    return Path(home) / "service"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and pacing of the demo (``quick`` shrinks it for tests)."""

    home: Path
    out_dir: Path
    clean_requests: int = 600
    max_drift_requests: int = 30_000
    after_fix_requests: int = 600
    requests_per_sec: float = 300.0
    time_budget_secs: float = 105.0
    initial_epochs: int = 60
    seed: int = 0
    quick: bool = False
    judge_python: str | None = None
    dashboard_port: int | None = None  # serve the live dashboard during the run (0: any port)

    @classmethod
    def quick_settings(cls, home: Path, out_dir: Path) -> DemoSettings:
        """The shorter run of ``vortex demo --quick`` (CI and the tests)."""
        return cls(home=home, out_dir=out_dir, clean_requests=300, max_drift_requests=20_000,
                   after_fix_requests=300, requests_per_sec=300.0, time_budget_secs=90.0,
                   initial_epochs=40, quick=True)


@dataclass
class _Timeline:
    start: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    quiet: bool = False

    def add(self, request: int, kind: str, text: str, **extra: Any) -> None:
        t = time.monotonic() - self.start
        self.events.append({"t": round(t, 3), "request": request, "kind": kind, "text": text, **extra})
        if not self.quiet:
            _clear_bar()
            print(f"[{t:6.1f}s] #{request:<5d} {kind:<10} {text}", flush=True)


def _clear_bar() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")


def _bar(done: int, total: int, phase: str, acc: float, t: float) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * min(1.0, done / max(total, 1)))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done} requests  {phase:<9} "
                     f"rolling accuracy {acc:5.1%}  {t:5.1f}s")
    sys.stderr.flush()


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1]: a clean training split and a stream pool."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:700], y[:700], x[700:], y[700:]


def drift(images: np.ndarray, rng: np.random.Generator, shift_fn) -> np.ndarray:
    """Displace each image by one pixel in a random direction and add pixel noise."""
    out = images.copy()
    directions = ((0, 1), (0, -1), (1, 0), (-1, 0))
    for i, k in enumerate(rng.integers(0, len(directions), size=len(out))):
        out[i] = shift_fn(out[i:i + 1], *directions[k])[0]
    out += rng.normal(0.0, 0.1, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.5)


def train_initial_model(x: np.ndarray, y: np.ndarray, epochs: int, seed: int):
    """The model that serves first: the MLP factory's architecture trained on clean digits."""
    import torch

    from ..training.models import mlp

    model = mlp(64, 64, 10, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def _import_service(tree: Path):
    """Import the service copy under ``home`` (its tunables file is the one RSI patches)."""
    init = tree / "digits_service" / "__init__.py"
    spec = importlib.util.spec_from_file_location("vortex_demo_digits_service", init,
                                                  submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the demo service from {init}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _service_mode(service):
    """The serving mode: the digits service's predict around the active torch model."""
    import torch

    def fast(model, x):
        def logits_fn(batch):
            with torch.inference_mode():
                return model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

        return service.predict(logits_fn, x.numpy())

    return fast


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo; returns the report (also written to ``out_dir/report.json``), whose
    ``checklist`` says which stages of the loop were reached (see :mod:`vortex.demo.stages`).
    """
    import torch

    from .. import BackgroundTrainingConfig, FluxConfig, Orchestrator, RSIConfig, RuntimeDetectorConfig

    torch.set_num_threads(1)  # leave the other core to the sandbox and the trainer
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    home = settings.home
    tree = service_tree(home)
    if not tree.exists():
        home.mkdir(parents=True, exist_ok=True)
        shutil.copytree(SERVICE_TEMPLATE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    service = _import_service(tree)
    timeline = _Timeline()
    rng = np.random.default_rng(settings.seed)

    x_train, y_train, x_pool, y_pool = load_data(settings.seed)
    model = train_initial_model(x_train, y_train, settings.initial_epochs, settings.seed)
    timeline.add(0, "model", f"initial MLP trained on {len(x_train)} clean digits")

    engine_kwargs: dict[str, Any] = {"tunables": [service.tunables]}  # reloaded at once on apply
    if settings.judge_python is not None:
        engine_kwargs["sandbox_python"] = settings.judge_python
    orch = (Orchestrator(model, MODEL_FACTORY, home, feature_dim=64,
                         modes={"fast": _service_mode(service)},
                         factory_kwargs={"in_features": 64, "hidden": 64, "out_features": 10,
                                         "seed": settings.seed})
            .with_runtime_detector(RuntimeDetectorConfig(
                monitor_interval_ms=200, window_size=200, confidence_drop_threshold=0.1,
                confidence_low_threshold=0.6, prediction_error_spike_threshold=0.35,
                trigger_cooldown_secs=20.0, latency_spike_threshold_ms=250.0))
            .with_self_modification(tree, **engine_kwargs)
            .with_background_trainer(BackgroundTrainingConfig(
                min_samples_for_training=1000 if settings.quick else 1500,
                training_interval_secs=3600, num_epochs=30, batch_size=64, learning_rate=3e-3,
                max_samples_per_batch=3000, buffer_capacity=10_000, min_improvement_threshold=2.0,
                flux=FluxConfig(half_life=800.0), watch_requests=150, run_timeout_secs=120)))
    orch.enable_rsi(RSIConfig(enabled=True, auto_apply_low_risk=True, min_inferences_before_rsi=100,
                              max_weaknesses_per_cycle=2, benchmark_repeats=3,
                              cycle_interval_secs=3600, watch_requests=100,
                              watch_regression_threshold=0.5))

    dashboard = None
    if settings.dashboard_port is not None:
        from ..dashboard.server import serve_in_background

        dashboard = serve_in_background(os.fspath(home), lambda: json.loads(orch.system_status().to_json()),
                                        port=settings.dashboard_port)
        print(f"dashboard (open during the demo): {dashboard.url}", flush=True)

    served = 0
    weaknesses: list[dict[str, Any]] = []

    def on_trigger(event) -> None:
        weaknesses.append({"request": served, "weaknesses": [w.to_dict() for w in event.weaknesses]})
        timeline.add(served, "weakness", event.reason + ": " + "; ".join(
            w.description for w in event.weaknesses))

    orch.detector.subscribe(on_trigger)
    orch.start_runtime_monitoring()
    orch.start_background_training()

    records: list[Served] = []
    tunables_seen: list[dict[str, Any]] = [service.tunables.values()]
    progress = _Progress()
    drift_started = settings.clean_requests
    deadline = time.monotonic() + settings.time_budget_secs
    total_target = settings.clean_requests + settings.max_drift_requests
    pace = 1.0 / settings.requests_per_sec
    try:
        while served < total_target and time.monotonic() < deadline:
            # The story is complete once the RSI patch's training run has concluded and its
            # effect has been served for a while; it cannot go on once the sandbox could not
            # judge (the judge cannot start in this environment: no patch will be applied).
            if progress.rsi_run_done_at is not None and \
                    served >= progress.rsi_run_done_at + settings.after_fix_requests:
                break
            if progress.judge_errored:
                timeline.add(served, "stop", "the sandbox could not judge a proposal: "
                             + progress.judge_errored)
                break
            i = int(rng.integers(0, len(x_pool)))
            x, label = x_pool[i], int(y_pool[i])
            drifted = served >= drift_started
            if served == drift_started:
                timeline.add(served, "drift", "inputs now displaced by one pixel and noised")
            if drifted:
                x = drift(x[None], rng, service.shift)[0]
            values = service.tunables.values()
            if values != tunables_seen[-1]:
                tunables_seen.append(values)
            pred = orch.infer(x)
            orch.feedback(pred.request_id, label)
            served += 1
            records.append(Served(
                request=served, correct=pred.output == label,
                nll=-math.log(max(pred.probabilities[label], 1e-300)),
                version=-1 if pred.model_version is None else pred.model_version,
                tunables=len(tunables_seen) - 1, drifted=drifted))
            if served % 25 == 0:
                progress.poll(orch, timeline, served)
                acc = float(np.mean([r.correct for r in records[-200:]]))
                _bar(served, total_target, "drift" if drifted else "clean", acc,
                     time.monotonic() - timeline.start)
            time.sleep(pace)
        progress.poll(orch, timeline, served)
    finally:
        _clear_bar()
        status = orch.system_status()
        if dashboard is not None:
            dashboard.stop()
        orch.close()
    evidence = DemoEvidence(
        drift_started=drift_started, served=records, weaknesses=weaknesses,
        proposals=[p.to_dict() for p in orch.get_proposals()],
        runs=[r.to_dict() for r in orch.trainer.runs()], swaps=progress.swaps,
        tunables=tunables_seen)
    report = _report(settings, records, timeline, status, evidence)
    atomic_write_bytes(settings.out_dir / "report.json",
                       json.dumps(report, indent=2, default=str).encode(), mode=0o644)
    _plot(records, timeline, drift_started, settings.out_dir / "timeline.png")
    return report


class _Progress:
    """Turns changes of proposals and training runs into timeline events."""

    def __init__(self) -> None:
        self.proposal_status: dict[str, str] = {}
        self.runs_seen: set[int] = set()
        self.rsi_run_done_at: int | None = None
        self.judge_errored: str | None = None
        self.swaps: list[tuple[int, int, int]] = []

    def poll(self, orch, timeline: _Timeline, served: int) -> None:
        for p in orch.get_proposals():
            status = p.status.value
            if self.proposal_status.get(p.id) == status:
                continue
            self.proposal_status[p.id] = status
            text = f"{p.id} [{p.risk.value} risk] {status}: {p.description}"
            if status in ("applied", "rejected", "errored") and p.test_result is not None:
                text += f" ({_test_summary(p.test_result)})"
            timeline.add(served, "proposal", text, status=status)
            if (p.test_result or {}).get("errored") and self.judge_errored is None:
                self.judge_errored = (p.test_result.get("errors") or ["no cause recorded"])[-1]
        for run in orch.trainer.runs():
            if run.run_id in self.runs_seen or run.status == "running":
                continue
            self.runs_seen.add(run.run_id)
            v = run.validation or {}
            reason = f" ({run.reason})" if run.reason else ""
            text = (f"run {run.run_id} [{run.trigger.value}{reason}] {run.status}")
            if v:
                text += (f": candidate v{run.version} accuracy {_pct(v.get('candidate_accuracy'))} "
                         f"vs active {_pct(v.get('active_accuracy'))} on {v.get('n')} held-out "
                         f"samples, improvement {_num(v.get('improvement_pct'))}% "
                         f"[{_num(v.get('ci_low'))}, {_num(v.get('ci_high'))}]")
            if run.error:
                text += f" ({run.error})"
            timeline.add(served, "training", text, trigger=run.trigger.value, status=run.status)
            if run.swapped:
                self.swaps.append((served, run.version, run.run_id))
                timeline.add(served, "swap", f"version {run.version} now serving")
            if run.trigger.value == "rsi_triggered" and self.rsi_run_done_at is None:
                self.rsi_run_done_at = served


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:+.1f}"


def _test_summary(result: Any) -> str:
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    parts = [tests_phrase(d)]
    delta = d.get("performance_delta")
    if delta is not None:
        parts.append(f"benchmark delta {delta:+.3g}")
    return ", ".join(parts)


def _report(settings: DemoSettings, records: list[Served], timeline: _Timeline, status,
            evidence: DemoEvidence) -> dict[str, Any]:
    checklist = loop_checklist(evidence)
    accuracy = next((s.facts for s in checklist.stages if s.name == "accuracy recovered"), {})
    return {
        "settings": {k: str(v) for k, v in settings.__dict__.items()},
        "requests": len(records),
        "checklist": checklist.to_dict(),
        "checklist_text": checklist.render(),
        "accuracy": {k: accuracy.get(k) for k in ("clean", "drifted_before_fixes", "after_last_swap")},
        "drift_started_at_request": evidence.drift_started,
        "swaps": [list(s) for s in evidence.swaps],
        "tunables": evidence.tunables,
        "duration_secs": round(time.monotonic() - timeline.start, 2),
        "timeline": timeline.events,
        "status": status.to_dict(),
    }


def _plot(records, timeline: _Timeline, drift_started: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r.request for r in records])
    k = 50

    def rolling(key: str) -> np.ndarray:
        v = np.array([float(getattr(r, key)) for r in records], dtype=float)
        return np.convolve(v, np.ones(k) / k, mode="valid") if len(v) >= k else v

    x = n[k - 1:] if len(n) >= k else n
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for ax, key, label in zip(axes, ("correct", "nll", "version"),
                              ("accuracy (rolling 50)", "NLL of the label (rolling 50)",
                               "model version serving"), strict=True):
        if key == "version":
            ax.step(n, [r.version for r in records], where="post", lw=1.2)
        else:
            ax.plot(x, rolling(key), lw=1.2)
        ax.set_ylabel(label)
        ax.axvspan(drift_started, n[-1] if len(n) else drift_started, color="orange", alpha=0.08)
        ax.grid(alpha=0.3)
    colors = {"weakness": "red", "proposal": "green", "swap": "blue"}
    for e in timeline.events:
        if e["kind"] in colors and (e["kind"] != "proposal" or e.get("status") == "applied"):
            for ax in axes:
                ax.axvline(e["request"], color=colors[e["kind"]], ls="--", lw=0.8, alpha=0.7)
    handles = [plt.Line2D([], [], color=c, ls="--", label=lbl) for lbl, c in
               (("weakness", "red"), ("proposal applied", "green"), ("model swap", "blue"))]
    axes[0].legend(handles=handles, loc="lower left")
    axes[0].set_title("Vortex demo: drift at the shaded region; detection, RSI and retraining")
    axes[-1].set_xlabel("request")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, png.getvalue(), mode=0o644)


def inspect_commands(home: Path) -> list[str]:
    """The commands that show what a run left in ``home``, as typed from the current directory."""
    where = shlex.quote(os.fspath(home))
    return [f"vortex status --home {where}", f"vortex proposals list --home {where}",
            f"vortex models list --home {where}"]

