"""The orchestrator: the seed system's scenarios, asserted strictly."""

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vortex
from vortex import (BackgroundTrainingConfig, Orchestrator, RSIConfig, RuntimeDetectorConfig,
                    WeaknessType)
from vortex.changes import OBSERVED
from vortex.errors import ConfigError, UnknownRequestError, VortexError
from vortex.training.models import mlp

FACTORY = "vortex.training.models:mlp"
KW = {"in_features": 4, "hidden": 8, "out_features": 3, "seed": 0}
DIGITS_SERVICE = Path(vortex.__file__).parent / "demo" / "digits_service"


def make_orch(tmp_path, **kwargs):
    return Orchestrator(mlp(**KW), FACTORY, tmp_path / "home", feature_dim=4, factory_kwargs=KW,
                        **kwargs)


def wait_for(predicate, timeout=60.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def test_constructor_validates(tmp_path):
    with pytest.raises(ConfigError, match="feature_dim"):
        Orchestrator(mlp(**KW), FACTORY, tmp_path, feature_dim=0)
    with pytest.raises(ConfigError, match="feature_dim=True"):
        Orchestrator(mlp(**KW), FACTORY, tmp_path / "never", feature_dim=True)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ConfigError, match="task"):
        Orchestrator(mlp(**KW), FACTORY, tmp_path, feature_dim=4, task="ranking")
    with pytest.raises(ConfigError, match="modes"):
        Orchestrator(mlp(**KW), FACTORY, tmp_path, feature_dim=4, modes={"slow": 3})


def test_detector_creation_start_and_stop(tmp_path):
    with make_orch(tmp_path).with_runtime_detector(RuntimeDetectorConfig(monitor_interval_ms=10)) as o:
        assert o.detector is not None and not o.detector.is_running
        o.start_runtime_monitoring()
        assert o.detector.is_running
        o.stop_runtime_monitoring()
        assert not o.detector.is_running


def test_infer_records_metrics_and_samples_are_counted(tmp_path):
    with make_orch(tmp_path).with_runtime_detector() as o:
        preds = [o.infer(np.ones(4, np.float32) * i) for i in range(25)]
        assert [p.request_id for p in preds] == list(range(1, 26))
        p = preds[0]
        assert p.output in (0, 1, 2) and 0 < p.confidence <= 1 and p.mode == "fast"
        assert math.isclose(sum(p.probabilities), 1.0, rel_tol=1e-6)
        assert p.confidence == max(p.probabilities)
        assert o.runtime_stats().total_samples == 25
        metrics = o.get_metrics()
        assert metrics["modes"]["fast"]["count"] == 25
        assert metrics["total_inferences"] == 25


def test_requests_and_outcomes_are_counted_at_their_flux_positions(tmp_path):
    with make_orch(tmp_path) as o:
        preds = [o.infer(np.full(4, i, np.float32)) for i in range(30)]
        for p in preds[:12]:  # feedback for requests 1..12 only
            o.feedback(p.request_id, p.output)
        positions = o.get_metrics()["positions"]
    # request k sits at flux position 1 + k % 9: ids 1..30 give four at 2, 3, 4, three elsewhere
    assert {p: positions[p]["inferences"] for p in range(1, 10)} == {
        1: 3, 2: 4, 3: 4, 4: 4, 5: 3, 6: 3, 7: 3, 8: 3, 9: 3}
    # outcomes under the same numbering: ids 1..12 -> positions 2..9, 1, 2, 3, 4
    assert {p: positions[p]["outcomes"] for p in range(1, 10)} == {
        1: 1, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1, 7: 1, 8: 1, 9: 1}
    assert all(positions[p]["success_rate"] == 1.0 for p in range(1, 10))


@pytest.mark.slow
def test_buffer_saved_once_on_close_and_reloaded_by_the_coordinator(tmp_path, monkeypatch):
    from vortex.training import SampleBuffer

    cfg = BackgroundTrainingConfig(min_samples_for_training=1000, training_interval_secs=3600,
                                   buffer_persist_interval_secs=0)
    saves = []
    real_save = SampleBuffer.save
    monkeypatch.setattr(SampleBuffer, "save", lambda self, path: saves.append(path) or real_save(self, path))
    o = make_orch(tmp_path).with_background_trainer(cfg)
    o.start_background_training()
    x, y = _separable(20)
    for xi, yi in zip(x, y):
        o.feedback(o.infer(xi).request_id, int(yi))
    o.close()
    assert len(saves) == 1  # trainer.stop() saves it; close() does not save it again
    with make_orch(tmp_path).with_background_trainer(cfg) as again:
        assert len(again.trainer.buffer) == 20
        # loaded by the coordinator, which knows it is unchanged since: nothing to save again
        assert again.trainer.persist_buffer() is False
    assert len(saves) == 1


def test_infer_rejects_bad_input_and_unknown_mode(tmp_path):
    with make_orch(tmp_path) as o:
        with pytest.raises(ValueError, match="features"):
            o.infer(np.ones(5))
        with pytest.raises(ValueError, match="NaN"):
            o.infer([1.0, math.nan, 0.0, 0.0])
        with pytest.raises(ValueError, match="'turbo'"):
            o.infer(np.ones(4), mode="turbo")
        for x, dtype in ((np.zeros(4, complex), "complex128"), (["1", "2", "3", "4"], "<U1"),
                         (np.array([1, 2, 3, 4], dtype=object), "object")):
            with pytest.raises(ValueError, match=f"dtype {dtype}: features must be real"):
                o.infer(x)  # complex was silently truncated to its real part, strings parsed
        assert o.get_metrics()["total_inferences"] == 0


def test_named_modes_each_map_to_their_callable(tmp_path):
    calls = []

    def thorough(model, x):
        calls.append(x.shape)
        return (model(x) + model(x * 0.99)) / 2

    with make_orch(tmp_path, modes={"thorough": thorough}) as o:
        assert o.infer(np.ones(4), mode="thorough").mode == "thorough"
        assert calls == [torch.Size([1, 4])]
        assert set(o.get_metrics()["modes"]) == {"thorough"}


def test_feedback_error_and_unknown_or_repeated_ids(tmp_path):
    with make_orch(tmp_path).with_runtime_detector() as o:
        p = o.infer(np.zeros(4))
        err = o.feedback(p.request_id, p.output)
        assert err == pytest.approx(1 - p.confidence)
        with pytest.raises(UnknownRequestError, match=str(p.request_id)):
            o.feedback(p.request_id, 0)
        with pytest.raises(UnknownRequestError, match="999"):
            o.feedback(999, 0)
        q = o.infer(np.zeros(4))
        with pytest.raises(ValueError, match="label=7"):
            o.feedback(q.request_id, 7)


@pytest.mark.parametrize("bad", [3, -1, 1.7, float("nan"), None, "1", True, np.array([1, 2])])
def test_a_refused_feedback_leaves_the_request_for_the_right_one(tmp_path, bad):
    with make_orch(tmp_path).with_runtime_detector() as o:
        p = o.infer(np.zeros(4, np.float32))
        with pytest.raises(ValueError, match="label="):
            o.feedback(p.request_id, bad)
        assert o.get_metrics()["total_outcomes"] == 0 and len(o._pending) == 1
        assert o.feedback(p.request_id, np.int64(p.output)) == pytest.approx(1 - p.confidence)
        assert o.get_metrics()["total_outcomes"] == 1


def test_feedback_takes_integral_labels_of_any_kind_and_refuses_fractions(tmp_path):
    with make_orch(tmp_path).with_runtime_detector() as o:
        for label in (2, 2.0, np.int8(2), np.float32(2.0), np.array(2), torch.tensor(2)):
            p = o.infer(np.zeros(4, np.float32))
            assert o.feedback(p.request_id, label) == pytest.approx(1 - p.probabilities[2])
        p = o.infer(np.zeros(4, np.float32))
        with pytest.raises(ValueError, match=r"label=1\.7: .*not a fraction"):
            o.feedback(p.request_id, 1.7)  # was taken as class 1


def test_racing_feedbacks_with_bad_and_good_labels_answer_each_request_once(tmp_path):
    import threading

    with make_orch(tmp_path).with_runtime_detector() as o:
        for _ in range(40):
            p = o.infer(np.zeros(4, np.float32))
            labels = [1.7, "x", None, 0, 1, 2]
            results: list[str] = []
            barrier = threading.Barrier(len(labels))

            def answer(label):
                barrier.wait()
                try:
                    o.feedback(p.request_id, label)
                    results.append("ok")
                except UnknownRequestError:
                    results.append("gone")
                except ValueError:
                    results.append("refused")

            threads = [threading.Thread(target=answer, args=(label,)) for label in labels]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert results.count("ok") == 1, results
        assert o.get_metrics()["total_outcomes"] == 40 and len(o._pending) == 0


def test_pending_table_is_bounded_and_expires(tmp_path):
    with make_orch(tmp_path, pending_capacity=3, pending_ttl_secs=0.05) as o:
        ids = [o.infer(np.zeros(4)).request_id for _ in range(5)]
        with pytest.raises(UnknownRequestError, match="evicted"):
            o.feedback(ids[0], 0)
        time.sleep(0.1)
        with pytest.raises(UnknownRequestError, match="expired"):
            o.feedback(ids[-1], 0)


def _confidence_model(level):
    """A 3-class model whose confidence is about `level` on any input."""
    model = mlp(**KW)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # logits (a, 0, 0) -> confidence e^a / (e^a + 2)
        a = math.log(2 * level / (1 - level)) if level > 1 / 3 else 0.0
        model[-1].bias.copy_(torch.tensor([a, 0.0, 0.0]))
    return model


@pytest.mark.parametrize(("levels", "expected"), [
    ((0.95, 0.62), WeaknessType.CONFIDENCE_DROP),
    ((0.5, 0.5), WeaknessType.CONFIDENCE_LOW),
])
def test_confidence_weaknesses_detected_through_infer(tmp_path, levels, expected):
    with make_orch(tmp_path).with_runtime_detector(RuntimeDetectorConfig(window_size=60)) as o:
        for level, n in zip(levels, (40, 20)):
            o._slot.swap(_confidence_model(level), None)
            for _ in range(n):
                o.infer(np.zeros(4))
        found = {w.type for w in o.detector.analyze()}
        assert expected in found


def test_latency_spike_detected_through_infer(tmp_path):
    def slow_sometimes(model, x):
        if slow_sometimes.slow:
            time.sleep(0.03)
        return model(x)

    slow_sometimes.slow = False
    cfg = RuntimeDetectorConfig(latency_spike_threshold_ms=20, latency_spike_count=3)
    with make_orch(tmp_path, modes={"fast": slow_sometimes}).with_runtime_detector(cfg) as o:
        for _ in range(15):
            o.infer(np.zeros(4))
        slow_sometimes.slow = True
        for _ in range(5):
            o.infer(np.zeros(4))
        assert WeaknessType.LATENCY_SPIKE in {w.type for w in o.detector.analyze()}


def test_system_status_is_complete_with_no_samples(tmp_path):
    with make_orch(tmp_path).with_runtime_detector().with_background_trainer(
            BackgroundTrainingConfig(task="classification")) as o:
        status = o.system_status()
        d = json.loads(status.to_json())
        for key in ("performance", "runtime", "weaknesses", "training", "model_versions",
                    "current_model_version", "pending_feedback", "config"):
            assert key in d
        assert d["runtime"]["total_samples"] == 0
        assert d["weaknesses"] == [] and d["pending_feedback"] == 0
        assert d["current_model_version"] == 1
        assert [v["version"] for v in d["model_versions"]] == [1]


def test_components_must_be_attached(tmp_path):
    with make_orch(tmp_path) as o:
        with pytest.raises(VortexError, match="with_runtime_detector"):
            o.runtime_stats()
        with pytest.raises(VortexError, match="with_background_trainer"):
            o.trigger_training()
        with pytest.raises(VortexError, match="with_self_modification"):
            o.rsi_cycle()


def _separable(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 4)).astype(np.float32)
    x[np.arange(n), y] += 2.0
    return x, y


@pytest.mark.slow
def test_training_trigger_versions_swap_and_rollback(tmp_path):
    cfg = BackgroundTrainingConfig(min_samples_for_training=60, num_epochs=15, batch_size=16,
                                   learning_rate=1e-2, min_improvement_threshold=1.0,
                                   training_interval_secs=3600, watch_requests=0)
    with make_orch(tmp_path).with_background_trainer(cfg) as o:
        o.start_background_training()
        x, y = _separable(300)
        for xi, yi in zip(x, y):
            o.feedback(o.infer(xi).request_id, int(yi))
        # True when it starts a run, False when coalesced into the sample-threshold run that
        # may already be going: either way a run happens, which the versions below check.
        o.trigger_training("test")
        assert wait_for(lambda: len(o.get_model_versions()) >= 2, timeout=120)
        assert o.trainer.wait_idle(120)
        versions = [v["version"] for v in o.get_model_versions()]
        assert versions[0] == 1 and len(versions) >= 2
        # a trained model beat the random one (when the sample threshold's run and the trigger's
        # both ran, the second may not beat the first by the threshold: then the first serves)
        assert o.current_model_version() in versions[1:]
        o.swap_to_version(1, reason="rollback test")
        assert o.current_model_version() == 1
        assert o.infer(x[0]).model_version == 1


@pytest.mark.slow
def test_low_confidence_auto_trigger_runs_an_rsi_cycle_that_produces_a_proposal(tmp_path):
    tree = tmp_path / "service"
    shutil.copytree(DIGITS_SERVICE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    o = (Orchestrator(_confidence_model(0.4), FACTORY, tmp_path / "home", feature_dim=4,
                      factory_kwargs=KW)
         .with_runtime_detector(RuntimeDetectorConfig(monitor_interval_ms=20,
                                                      trigger_cooldown_secs=600))
         .with_self_modification(tree))
    o.enable_rsi(RSIConfig(enabled=True, min_inferences_before_rsi=10, benchmark_repeats=2))
    with o:
        o.start_runtime_monitoring()
        for _ in range(40):
            o.infer(np.zeros(4))
        assert wait_for(lambda: len(o.get_proposals()) >= 1, timeout=120)
        proposal = o.get_proposals()[0]
        assert proposal.weakness.type in (WeaknessType.CONFIDENCE_LOW, WeaknessType.CONFIDENCE_DROP)
        assert proposal.diff.strip()
        assert o.rsi_stats()["proposals"] >= 1


def _numpy_answer(model, x):
    with torch.inference_mode():
        z = model(torch.as_tensor(np.asarray(x, np.float32)).reshape(1, -1)).double().numpy()[0]
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(p.argmax()), p


@pytest.mark.parametrize("as_input", [
    lambda v: v, lambda v: v.astype(np.float64), lambda v: v.tolist(), torch.from_numpy,
    lambda v: v.reshape(1, 4), lambda v: np.repeat(v, 2)[::2],
])
def test_infer_accepts_every_input_form_with_the_same_answer(tmp_path, as_input):
    x = np.array([0.3, -1.2, 2.0, 0.1], np.float32)
    with make_orch(tmp_path) as o:
        cls, p = _numpy_answer(o._slot.get()[1], x)
        pred = o.infer(as_input(x))
        assert pred.output == cls and type(pred.output) is int
        np.testing.assert_allclose(pred.probabilities, p, rtol=1e-12)
        assert type(pred.probabilities) is tuple and pred.confidence == max(pred.probabilities)
        assert o.feedback(pred.request_id, cls) == pytest.approx(1 - p[cls], rel=1e-12)


@pytest.mark.parametrize("output", [
    lambda z: z.double(), lambda z: z.numpy(), lambda z: z.numpy().astype(np.float64).tolist(),
    lambda z: z.t(), lambda z: z.to(torch.bfloat16).float() + 0 * z,
])
def test_infer_answers_any_form_of_logits_like_numpy(tmp_path, output):
    def mode(model, x):
        return output(model(x))

    x = np.array([0.3, -1.2, 2.0, 0.1], np.float32)
    with make_orch(tmp_path, modes={"fast": mode}) as o:
        with torch.inference_mode():
            z = np.asarray(output(o._slot.get()[1](torch.from_numpy(x[None]))), np.float64).reshape(-1)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        pred = o.infer(x)
        assert pred.output == int(p.argmax())
        np.testing.assert_allclose(pred.probabilities, p, rtol=1e-12)


def test_infer_runs_the_mode_in_inference_mode_and_rejects_nan_logits(tmp_path):
    seen = []

    def mode(model, x):
        seen.append((torch.is_inference_mode_enabled(), x.shape, x.dtype))
        return model(x) * math.nan if len(seen) > 1 else model(x)

    with make_orch(tmp_path, modes={"fast": mode}).with_runtime_detector() as o:
        o.infer(np.zeros(4, np.float32))
        with pytest.raises(ValueError, match="confidence"):
            o.infer(np.zeros(4, np.float32))
        assert seen == [(True, torch.Size([1, 4]), torch.float32)] * 2
        assert o.runtime_stats().total_samples == 1 and len(o._pending) == 1
    assert not torch.is_inference_mode_enabled()


def test_pending_table_under_threads_answers_each_request_exactly_once(tmp_path):
    import threading

    n_threads, per_thread = 4, 300
    with make_orch(tmp_path, pending_capacity=50).with_runtime_detector() as o:
        ids: list[list[int]] = [[] for _ in range(n_threads)]
        outcomes: list[list[str]] = [[] for _ in range(n_threads)]
        barrier = threading.Barrier(n_threads)

        def serve(k):
            barrier.wait()
            for i in range(per_thread):
                ids[k].append(o.infer(np.full(4, i, np.float32)).request_id)
                # every thread also answers the newest ids of all threads, racing the others
                for rid in (ids[k][-1], ids[(k + 1) % n_threads][-1] if ids[(k + 1) % n_threads] else -1):
                    try:
                        o.feedback(rid, 0)
                        outcomes[k].append(("ok", rid))
                    except UnknownRequestError:
                        outcomes[k].append(("gone", rid))

        threads = [threading.Thread(target=serve, args=(k,)) for k in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        all_ids = sorted(i for part in ids for i in part)
        assert all_ids == list(range(1, n_threads * per_thread + 1))
        answered = [rid for part in outcomes for status, rid in part if status == "ok"]
        assert len(answered) == len(set(answered))  # never twice
        assert len(o._pending) <= 50
        assert o.runtime_stats().total_samples == n_threads * per_thread


def test_pending_table_stays_bounded_when_ids_are_stored_after_their_eviction():
    from vortex.pending import PendingTable as _PendingTable

    table = _PendingTable(capacity=4, ttl_secs=60)
    item = (None, None, (1.0,), 0, 1.0, "fast", None, time.perf_counter())
    # threads that took ids 1..100 and were preempted before storing them ...
    late = [next(table._ids) for _ in range(100)]
    for _ in range(10):
        table.add(item)
    for request_id in late:  # ... store them after they were due for eviction
        table._items[request_id] = ("late",)
    newest = table.add(item)  # the table is over its slack: the next add sweeps
    assert sorted(table._items) == list(range(newest - 3, newest + 1))
    assert table.pop(newest) is item


def test_rsi_engine_observations_are_skipped_only_without_a_watch(tmp_path):
    tree = tmp_path / "service"
    shutil.copytree(DIGITS_SERVICE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    with make_orch(tmp_path).with_self_modification(tree, RSIConfig(watch_requests=0)) as o:
        assert not o.rsi.needs_observations
        o.feedback(o.infer(np.zeros(4)).request_id, 0)
        assert all(o.changes.recent(m, 10) == [] for m in OBSERVED)
        o.enable_rsi(RSIConfig(watch_requests=5))
        assert o.rsi.needs_observations
        o.feedback(o.infer(np.zeros(4)).request_id, 0)
        assert [len(o.changes.recent(m, 10)) for m in ("latency_ms", "confidence", "error")] == [1, 1, 1]


def test_patches_and_swaps_share_one_change_board_audited_in_the_home(tmp_path):
    """The engine's and the coordinator's watches end each other's (vortex.changes), and what
    a swap ended is written to the home's RSI audit log; feedback feeds the watch the NLL."""
    tree = tmp_path / "service"
    shutil.copytree(DIGITS_SERVICE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = BackgroundTrainingConfig(min_samples_for_training=1000, training_interval_secs=3600)
    with (make_orch(tmp_path).with_self_modification(tree).with_background_trainer(cfg)) as o:
        assert o.rsi.changes is o.changes and o.trainer.changes is o.changes
        p = o.infer(np.zeros(4, np.float32))
        o.feedback(p.request_id, 1)
        assert o.changes.recent("nll", 10) == [pytest.approx(-math.log(p.probabilities[1]))]
        assert o.changes.recent("misclassified", 10) == [float(p.output != 1)]
        o.changes.subscribe(lambda change: "a stand-in watch")  # as if a watch were running
        o.swap_to_version(1, reason="ops")
        ended = [e["data"] for e in o.rsi.audit.entries() if e["event"] == "watch_superseded"]
        assert ended and ended[-1]["watch"] == "a stand-in watch" and ended[-1]["by"] == "training"
        assert o.system_status().changes[-1]["change"]["description"] == "version 1 swapped in (ops)"


@pytest.mark.slow
def test_restart_with_the_same_home_recovers_everything(tmp_path):
    from vortex.monitor.weaknesses import Weakness

    tree = tmp_path / "service"
    shutil.copytree(DIGITS_SERVICE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = BackgroundTrainingConfig(min_samples_for_training=50, num_epochs=5, batch_size=16,
                                   training_interval_secs=3600, watch_requests=0)

    def build():
        return (make_orch(tmp_path).with_self_modification(tree).with_background_trainer(cfg))

    with build() as o:
        x, y = _separable(120)
        for xi, yi in zip(x, y):
            o.feedback(o.infer(xi).request_id, int(yi))
        run = o.trainer.run_once("manual")
        assert run.version == 2
        o.swap_to_version(2, reason="test")
        weakness = Weakness(WeaknessType.PREDICTION_ERROR_SPIKE, 0.5, "test", time.time(), 0.6, 0.3, 50)
        proposal = o.rsi.propose(weakness)
        audit_entries = o.rsi.audit.verify().entries
        buffered = len(o.trainer.buffer)
        first_seq = o.trainer.buffer.snapshot().seq[0]
    assert buffered == 120

    with build() as again:
        assert again.current_model_version() == 2
        assert [v["version"] for v in again.get_model_versions()] == [1, 2]
        assert len(again.trainer.buffer) == buffered
        assert again.trainer.buffer.snapshot().seq[0] == first_seq
        assert again.trainer.buffer.next_seq == first_seq + buffered
        assert [p.id for p in again.get_proposals()] == [proposal.id]
        assert again.get_proposals()[0].diff == proposal.diff
        verified = again.rsi.audit.verify()
        assert verified.ok and verified.entries >= audit_entries
        status = again.system_status()
        assert status.current_model_version == 2 and len(status.proposals) == 1


@pytest.mark.slow
def test_scheduled_cleanup_removes_old_versions_but_never_the_active_one(tmp_path):
    cfg = BackgroundTrainingConfig(min_samples_for_training=50, num_epochs=2, batch_size=16,
                                   training_interval_secs=3600, watch_requests=0,
                                   auto_swap_models=False, max_version_age_days=2 / 86400)
    with make_orch(tmp_path, cleanup_interval_secs=0.2).with_background_trainer(cfg) as o:
        x, y = _separable(80)
        o.trainer.add_samples(x, y)
        run = o.trainer.run_once("manual")
        assert [v["version"] for v in o.get_model_versions()] == [1, run.version]
        o.start_background_training()  # starts the scheduled cleanup
        assert wait_for(lambda: len(o.get_model_versions()) == 1, timeout=30)
        assert [v["version"] for v in o.get_model_versions()] == [1]  # the active one stays
        assert o.current_model_version() == 1


def test_a_detector_trigger_reaches_a_cycle_through_one_queue_and_one_thread(tmp_path):
    """Issue 13: a trigger crossed two queues and two threads named vortex-rsi-trigger (the
    orchestrator's, then the engine's). Now the monitor thread hands it to the engine's
    scheduler, whose one thread runs the cycle; triggers arriving meanwhile are merged."""
    import threading

    from vortex.monitor import RSITriggerEvent, Weakness

    tree = tmp_path / "service"
    shutil.copytree(DIGITS_SERVICE, tree, ignore=shutil.ignore_patterns("__pycache__"))
    with (make_orch(tmp_path).with_runtime_detector()
          .with_self_modification(tree, RSIConfig(enabled=True))) as o:
        release, cycles = threading.Event(), []

        def cycle(weaknesses=None):  # stands in for a cycle that takes its time
            cycles.append([w.type for w in weaknesses or ()])
            release.wait(30)

        o.rsi.scheduler._cycle = cycle
        event = RSITriggerEvent((Weakness(WeaknessType.CONFIDENCE_LOW, 0.5, "low", time.time(),
                                          0.4, 0.6, 20),))
        for subscriber in o.detector._subscribers:  # as the monitor thread delivers it
            subscriber(event)
        assert wait_for(lambda: len(cycles) == 1, timeout=10)
        o.detector._subscribers[0](event)
        o.detector._subscribers[0](event)  # both merged into the one next cycle
        names = [t.name for t in threading.enumerate()]
        assert names.count("vortex-rsi-trigger") == 1
        release.set()
        assert o.rsi.wait_idle(10)
        assert cycles == [[WeaknessType.CONFIDENCE_LOW], [WeaknessType.CONFIDENCE_LOW] * 2]
