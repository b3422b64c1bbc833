"""A feedback's error reaches the control plane on exactly its request, with the version that
answered it: serving workers in real processes, the control plane in this one reading their
shared memory (docs/SHM.md, format 3; ``vortex.serving.links``).

* the exact link: requests answered by worker A, their feedback taken by worker B (and one by
  A), interleaved, out of order, some after their record was read by an earlier pump; every
  error sits on its own request's detector record (paired with that request's latency);
* a feedback read before its request's record (the middleware writes the record after the
  response) waits for it and is linked then;
* the change board receives ``answered`` and ``labelled`` figures tagged with the version that
  answered: before a swap the old, after it the new.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# A serving worker in its own process: one JSON command per stdin line, one JSON answer per
# stdout line. The child imports the vortex this test imported (its sys.path).
_WORKER = r"""
import json, sys
import numpy as np
from vortex.serving import ServiceSpec, ServingWorker
spec = ServiceSpec(home=sys.argv[1], model_factory="vortex.training.models:mlp", feature_dim=4,
                   n_classes=3, factory_kwargs={"in_features": 4, "out_features": 3, "seed": 1})
worker = ServingWorker(spec, follow_interval=3600)  # follows only when told to
worker.start()
print(json.dumps({"ready": worker.segment.segment_id}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "infer":
        p = worker.infer(np.asarray(cmd["x"], np.float32))
        out = {"request_id": p.request_id, "latency_ms": p.latency_ms, "version": p.model_version,
               "probabilities": list(p.probabilities)}
    elif cmd["op"] == "feedback":
        out = {"error": worker.feedback(cmd["request_id"], cmd["label"])}
    else:
        out = {"version": worker.follow_once()}
    print(json.dumps(out), flush=True)
worker.stop()
"""


class Worker:
    """A ServingWorker process of ``home``."""

    def __init__(self, home) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(home)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)
        self.segment_id = self._read()["ready"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, f"worker process exited with {self.proc.wait()}"
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def infer(self, x) -> dict:
        return self.ask(op="infer", x=[float(v) for v in x])

    def feedback(self, request_id: str, label: int) -> float:
        return self.ask(op="feedback", request_id=request_id, label=label)["error"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            assert self.proc.wait(30) == 0
        finally:
            self.proc.stdout.close()


def _spec(home, configure):
    from vortex.serving import ServiceSpec

    return ServiceSpec(home=str(home), model_factory="vortex.training.models:mlp", feature_dim=4, n_classes=3,
                       factory_kwargs={"in_features": 4, "out_features": 3, "seed": 1}, configure=configure)


def _detector(orch):
    from vortex import RuntimeDetectorConfig

    orch.with_runtime_detector(RuntimeDetectorConfig(window_size=1000))


def _window(plane) -> tuple[np.ndarray, np.ndarray]:
    """(latency_ms, error) of every record in the control plane's detector, oldest first."""
    snap = plane.orchestrator.detector._window.snapshot()
    return snap["latency_ms"], snap["error"]


def test_each_error_lands_on_exactly_its_request_wherever_its_feedback_was_taken(home):
    from vortex.serving import ControlPlane

    plane = ControlPlane(_spec(home, _detector))  # not started: the test drives its pump
    a, b = Worker(home), Worker(home)
    try:
        rng = np.random.default_rng(7)
        answers = []

        def answer(n: int) -> None:
            answers.extend(a.infer(rng.random(4)) for _ in range(n))

        expected: dict[int, float] = {}

        def feed(worker: Worker, k: int, label: int) -> None:
            error = worker.feedback(answers[k]["request_id"], label)
            assert error == pytest.approx(1.0 - answers[k]["probabilities"][label])
            expected[k] = error

        answer(6)
        plane.pump()                      # records 0..5 read: no error yet
        feed(b, 4, 2)                     # out of order, by the other worker
        feed(b, 1, 0)
        answer(3)
        feed(b, 7, 1)                     # a request answered after the last pump
        feed(a, 2, 1)                     # taken by the answering worker itself
        plane.pump()
        feed(b, 0, 2)                     # its record was read two pumps ago
        feed(b, 8, 0)
        plane.pump()
        assert plane.counts["linked_errors"] == 6
        assert plane.counts["unlinked_errors"] == plane.counts["dropped_errors"] == 0

        latency, error = _window(plane)
        assert latency.tolist() == [x["latency_ms"] for x in answers]  # record k is request k
        for k in range(len(answers)):
            if k in expected:  # the sample's error is float32
                assert error[k] == np.float32(expected[k]), (k, error[k], expected[k])
            else:
                assert np.isnan(error[k]), (k, error[k])
        # each error differs, so a shifted link would have shown above
        assert len({np.float32(e) for e in expected.values()}) == len(expected)
    finally:
        a.close()
        b.close()
        plane.stop()


def test_a_feedback_read_before_its_requests_record_waits_for_it(home):
    from vortex.serving import ControlPlane, ServingWorker
    from vortex.serving.worker import RequestContext, current_request

    plane = ControlPlane(_spec(home, _detector))
    worker = ServingWorker(_spec(home, None))
    worker.start()
    try:
        first = worker.infer(np.full(4, 0.25, np.float32))  # recorded at once (no HTTP request)
        context = RequestContext("overtaken-1")
        token = current_request.set(context)
        try:  # as in the middleware: the record is written after the response is sent
            late = worker.infer(np.full(4, 0.5, np.float32))
        finally:
            current_request.reset(token)
        error = worker.feedback(late.request_id, 2)
        plane.pump()  # the sample, not its record
        assert plane.counts["linked_errors"] == 0 and len(plane._overtaken) == 1
        worker.segment.record_answer(3.5, context.confidence, context.request, context.version)
        plane.pump()
        assert plane.counts["linked_errors"] == 1 and not plane._overtaken
        latency, errors = _window(plane)
        assert latency.tolist() == [first.latency_ms, 3.5]
        assert np.isnan(errors[0]) and errors[1] == np.float32(error)
    finally:
        worker.stop()
        plane.stop()


def _keep_everything(orch):
    _detector(orch)
    orch.changes.keep(1000)


def test_the_board_gets_every_figure_tagged_with_the_version_that_answered(home):
    import torch

    from vortex.serving import ControlPlane
    from vortex.training.models import mlp
    from vortex.training.registry import ModelRegistry

    registry = ModelRegistry(home / "models")
    old = registry.register(mlp(in_features=4, out_features=3, seed=1), {"trigger": "test"})
    registry.set_active(old, "test")
    torch.manual_seed(5)
    new = registry.register(mlp(in_features=4, out_features=3, seed=2), {"trigger": "test"})
    plane = ControlPlane(_spec(home, _keep_everything))
    worker, other = Worker(home), Worker(home)
    try:
        rng = np.random.default_rng(3)
        before = [worker.infer(rng.random(4)) for _ in range(5)]
        assert {x["version"] for x in before} == {old}
        registry.set_active(new, "test")
        assert worker.ask(op="follow")["version"] == new
        after = [worker.infer(rng.random(4)) for _ in range(4)]
        assert {x["version"] for x in after} == {new}
        # feedback taken by the other worker (still serving the old version: the sample carries
        # the version that answered, not the taker's), the newest request's first
        labelled = {}
        for x, label in [(after[3], 0), (before[1], 1), (after[0], 2), (before[4], 0)]:
            labelled[x["request_id"]] = other.feedback(x["request_id"], label)
        plane.pump()
        board = plane.orchestrator.changes
        assert board.recent("latency_ms", 100, version=old) == [x["latency_ms"] for x in before]
        assert board.recent("latency_ms", 100, version=new) == [x["latency_ms"] for x in after]
        assert board.recent("confidence", 100, version=new) == [max(x["probabilities"]) for x in after]
        want_old = [np.float32(labelled[x["request_id"]]) for x in (before[1], before[4])]
        want_new = [np.float32(labelled[x["request_id"]]) for x in (after[3], after[0])]
        assert board.recent("error", 100, version=old) == want_old
        assert board.recent("error", 100, version=new) == want_new
        misclassified = board.recent("misclassified", 100, version=new)
        wanted = [float(np.argmax(x["probabilities"]) != label) for x, label in [(after[3], 0), (after[0], 2)]]
        assert misclassified == wanted
        nll = board.recent("nll", 100, version=old)
        assert nll == pytest.approx([-np.log(before[1]["probabilities"][1]), -np.log(before[4]["probabilities"][0])],
                                    rel=1e-6)
        assert board.recent("labelled_confidence", 100, version=old) == pytest.approx(
            [max(before[1]["probabilities"]), max(before[4]["probabilities"])], rel=1e-6)
    finally:
        worker.close()
        other.close()
        plane.stop()


def test_an_error_whose_request_was_evicted_still_counts_on_its_workers_newest_record(home):
    from vortex.serving import ControlPlane, ServingWorker
    from vortex.serving.links import RequestLinks

    plane = ControlPlane(_spec(home, _detector))
    plane._links = RequestLinks(per_worker=4)  # request k + 4 takes request k's place
    worker = ServingWorker(_spec(home, None))
    worker.start()
    try:
        answers = [worker.infer(np.full(4, k / 8, np.float32)) for k in range(6)]
        plane.pump()
        evicted = worker.feedback(answers[0].request_id, 1)  # request 0: overwritten by 4
        exact = worker.feedback(answers[3].request_id, 2)
        plane.pump()
        assert (plane.counts["linked_errors"], plane.counts["unlinked_errors"]) == (1, 1)
        _, errors = _window(plane)
        # the evicted one on the newest record still without an error (request 5)
        assert errors[3] == np.float32(exact) and errors[5] == np.float32(evicted)
        assert np.isnan(errors[[0, 1, 2, 4]]).all()
        # a segment id no record came from: waits for its record, then leaves the detector
        worker.segment.push_feedback(np.zeros(4, np.float32), 0, 0.5, 0.25, 0, 12345, 0, None, 1.0, None)
        for _ in range(41):
            plane.pump()
        assert plane.counts["dropped_errors"] == 1 and not plane._overtaken
    finally:
        worker.stop()
        plane.stop()


def test_request_links_refuse_a_table_size_that_is_not_a_power_of_two():
    from vortex.serving.links import RequestLinks

    with pytest.raises(ValueError, match="per_worker=6"):
        RequestLinks(per_worker=6)
