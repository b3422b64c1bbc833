"""Background training demo: a digits classifier keeps learning while it serves.

A small MLP (``vortex.training.models:mlp``) starts untrained and serves a stream of
handwritten digits (scikit-learn's bundled ``load_digits``, no download).  Every answer gets
its ground truth back as feedback: it becomes a training sample and a live error
observation.  Each time enough new samples arrived, the coordinator trains a candidate in a
separate worker process, validates it against the served model on the held-out
(sacred-position) samples and hot-swaps it in when it is better with a confidence interval
above zero, all while requests keep being served.  At the end the demo rolls back to an
earlier version by hand, serves on it, rolls forward again and prints the versions table, the
serving log and a checklist of the stages it shows (a run, a validated candidate, a better
version swapped in, the rollback and roll-forward); the exit status is 1 unless all happened.

    python examples/background_training_demo.py            # full run (~1 min)
    python examples/background_training_demo.py --quick    # ~15 s
"""

from __future__ import annotations

import argparse
import collections
import logging
import tempfile
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from vortex import BackgroundTrainingConfig
from vortex.demo.checklist import Checklist
from vortex.training import BackgroundTrainingCoordinator
from vortex.training.models import mlp

FACTORY = "vortex.training.models:mlp"


def serve(coord, xs, ys, pace, per_version, learn=True):
    """Serve each sample, feed its label back; count correct answers per served version.

    With ``learn=False`` the feedback only feeds the live statistics, not the training buffer.
    """
    for x, label in zip(xs, ys):
        version, model = coord.slot.get()  # lock-free; this request stays on this model
        with torch.inference_mode():
            probs = torch.softmax(model(torch.from_numpy(x)[None]), dim=1)[0]
        confidence, pred = (float(v) for v in probs.max(dim=0))
        correct = int(pred) == int(label)
        # feedback: a training sample and a live observation for the post-swap watch
        if learn:
            coord.add_sample(x, int(label), confidence=confidence, error=float(not correct))
        coord.observe_live(version, error=float(not correct), confidence=confidence)
        per_version[version][0] += correct
        per_version[version][1] += 1
        if pace:
            time.sleep(pace)


def fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def checklist(runs, rolled: tuple | None, per_version) -> Checklist:
    """The stages this demo shows, each with its figure."""
    c = Checklist("background training demo")
    done = [r for r in runs if r.status not in ("failed", "timeout", "cancelled", "skipped")]
    broken = [r for r in runs if r.status in ("failed", "timeout")]
    if done:
        c.reached("training runs", f"{len(done)} concluded, {sum(r.train_samples for r in done)} "
                  "samples trained on, in worker processes while serving")
    elif broken:
        c.errored("training runs", f"run {broken[0].run_id} {broken[0].status}: {broken[0].error}")
    else:
        c.not_reached("training runs", "no run concluded")
    validated = [r for r in done if r.validation]
    if validated:
        v = validated[-1].validation
        c.reached("candidate validated", f"run {validated[-1].run_id}: accuracy {v['active_accuracy']:.3f} -> "
                  f"{v['candidate_accuracy']:.3f} on {v['n']} held-out samples, improvement "
                  f"{v['improvement_pct']:+.1f}% [{v['ci_low']:+.1f}, {v['ci_high']:+.1f}]")
    else:
        c.not_reached("candidate validated", "no run had held-out samples to validate on")
    swapped = [r for r in done if r.swapped]
    if swapped:
        c.reached("better version swapped in", ", ".join(f"v{r.version} (run {r.run_id})" for r in swapped))
    else:
        c.not_reached("better version swapped in", "no candidate beat the served model")
    if rolled is None:
        c.not_reached("manual rollback and roll-forward", "no earlier version to roll back to")
    else:
        (back, fwd) = rolled
        acc = {v: per_version[v][0] / per_version[v][1] for v in (back, fwd) if per_version[v][1]}
        c.reached("manual rollback and roll-forward",
                  f"v{back} served again (live accuracy {acc.get(back, 0):.3f}), then v{fwd} "
                  f"({acc.get(fwd, 0):.3f})")
    return c


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (used by the tests)")
    parser.add_argument("--home", default=None, help="state directory (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    n_stream = 1000 if args.quick else len(x)
    xs, ys = x[order[:n_stream]], y[order[:n_stream]]

    kwargs = {"in_features": 64, "hidden": 64, "out_features": 10, "seed": 0}
    config = BackgroundTrainingConfig(
        min_samples_for_training=300 if args.quick else 400,  # SAMPLE_THRESHOLD trigger
        num_epochs=8 if args.quick else 15, batch_size=32, learning_rate=3e-3,
        min_improvement_threshold=2.0, watch_requests=100, watch_regression_margin=0.1,
        world_size=1, worker_threads=1)
    home = args.home or tempfile.mkdtemp(prefix="vortex-demo-")
    coord = BackgroundTrainingCoordinator(config, mlp(**kwargs), FACTORY, home, feature_dim=64,
                                          factory_kwargs=kwargs)
    print(f"home: {home}\nserving version {coord.current_model_version()} (untrained)")

    per_version: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    coord.start()
    t0 = time.perf_counter()
    try:
        serve(coord, xs, ys, 0.008 if args.quick else 0.012, per_version)
        coord.wait_idle(300)
        stream_secs = time.perf_counter() - t0
        stats = coord.stats()
        print(f"\nserved {n_stream} requests in {stream_secs:.1f} s while training in the background: "
              f"{stats.runs_completed} runs, {stats.swaps} swaps, {stats.runs_failed} failed, "
              f"now serving version {stats.current_version}")
        for run in coord.runs():
            v = run.validation or {}
            print(f"  run {run.run_id} ({run.trigger.value}): {run.status:9s} samples={run.samples} "
                  f"acc {fmt(v.get('active_accuracy'))} -> {fmt(v.get('candidate_accuracy'))} "
                  f"improvement {fmt(v.get('improvement_pct'), '+.1f')}% "
                  f"CI [{fmt(v.get('ci_low'), '+.1f')}, {fmt(v.get('ci_high'), '+.1f')}] "
                  f"in {run.timings.get('total', 0):.1f} s")

        # a rollback by hand to the previous version, serve on it, then roll forward again
        best = coord.current_model_version()
        rolled = None
        earlier = [r["version"] for r in coord.get_model_versions() if r["version"] < best]
        probe = order[n_stream:n_stream + 200] if args.quick else order[:200]
        if earlier:
            coord.swap_to_version(earlier[-1], reason="demo: manual rollback")
            print(f"\nrolled back to version {earlier[-1]}")
            serve(coord, x[probe], y[probe], 0.0, per_version, learn=False)
            coord.swap_to_version(best, reason="demo: roll forward")
            print(f"rolled forward to version {best}")
            serve(coord, x[probe], y[probe], 0.0, per_version, learn=False)
            rolled = (earlier[-1], best)
    finally:
        coord.stop(cancel=True)

    print("\nversions:")
    print(f"  {'version':>7} {'status':9} {'parent':>6} {'trigger':17} {'samples':>7} "
          f"{'train_loss':>10} {'val_loss':>8} {'val_acc':>7} {'improv%':>8}  live accuracy")
    for r in coord.get_model_versions():
        right, total = per_version.get(r["version"], (0, 0))
        live = f"{right / total:.3f} over {total}" if total else "-"
        print(f"  {r['version']:>7} {r['status']:9} {fmt(r['parent'], 'd'):>6} {r['trigger']:17} "
              f"{r['samples']:>7} {fmt(r['train_loss']):>10} {fmt(r['val_loss']):>8} "
              f"{fmt(r['val_accuracy']):>7} {fmt(r['improvement_pct'], '+.1f'):>8}  {live}")
    print("\nserving log:")
    for e in coord.registry.serving_log():
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(e['time']))}  "
              f"{fmt(e['from_version'], 'd'):>4} -> {e['to_version']:<4} {e['reason']}")
    result = checklist(coord.runs(), rolled, per_version)
    print("\n" + result.render())
    return result.exit_status


if __name__ == "__main__":
    raise SystemExit(main())
