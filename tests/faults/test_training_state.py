"""Training state under a hostile environment: every writer killed at random moments, every
file flipped and truncated, the serving process killed under its workers and its buffer.

After each kill the state on disk must be the state before the interrupted operation or the
state after it, never a half; every file must verify and the next open and write must work.
Each corruption of a file Vortex writes must be detected (a ``CorruptFileError`` naming the
file) or provably harmless, in a child process so that a crash is a failure, not a lost run.
The full sweeps run from ``scripts/fault_sweep.py``; here a dense seeded sample.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from harness import cases, kill_at_random, sweep, sweep_kind
from proc_support import alive
from training_loaders import KINDS, UNSEALED_KINDS

from vortex._io import is_temp_name

pytestmark = pytest.mark.slow

KILLS_PER_WRITER = 20
SWEEP_SAMPLE = 600  # positions per file kind (x 2 flip masks, + truncations)


# ----------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_corruption_is_detected_or_harmless(tmp_path, kind):
    make, rel, loader, acceptable = KINDS[kind]
    report = sweep_kind(tmp_path, make, rel, loader, sample=SWEEP_SAMPLE, seed=12, acceptable=acceptable)
    report.assert_held()
    counts = report.counts()
    flips = sum(1 for o in report.outcomes if o.case.kind == "flip")
    # sealed files and checksummed lines: no flip can be harmless or silently recovered
    assert counts["detected"] >= flips, report.summary()


@pytest.mark.parametrize("kind", sorted(UNSEALED_KINDS))
def test_files_written_before_the_seal_are_validated_not_crashed_on(tmp_path, kind):
    """Old versions.arrow files (no seal) still load; a damaged one never crashes the process
    nor raises an unrelated error (their values cannot be verified: the next write seals them)."""
    make, rel, loader, _ = UNSEALED_KINDS[kind]
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    make(str(pristine))
    report = sweep(pristine, rel, loader, cases((pristine / rel).stat().st_size, sample=300, seed=5))
    print(report.summary())
    bad = [o for o in report.outcomes if o.verdict in ("crash", "wrong_error")]
    assert not bad, [(str(o.case), o.verdict, o.detail[:200]) for o in bad[:5]]


# ----------------------------------------------------------------------------- kills
def _states(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _kill_many(code: str, args: list[str], check, *, kills: int = KILLS_PER_WRITER,
               delay: tuple[float, float] = (0.0, 0.15)) -> dict[str, int]:
    """Run ``code`` ``kills`` times, SIGKILL it at a random moment after it printed "ready",
    and call ``check(states_it_printed)`` on the state left on disk each time."""
    tally = {"kills": 0, "finished": 0, "orphans_removed": 0}
    for i in range(kills):
        snippet = f"import sys; sys.argv[1:] = {args + [str(i)]!r}\n" + code
        status, out = kill_at_random(snippet, delay=delay, seed=1000 + i, ready="ready", timeout=120)
        assert status in (-signal.SIGKILL, 0), out[-2000:]
        tally["kills" if status < 0 else "finished"] += 1
        tally["orphans_removed"] += check(_states(out)) or 0
    assert tally["kills"] >= kills * 3 // 4, tally
    return tally


def _temp_files(directory) -> list[str]:
    return [n for n in os.listdir(directory) if is_temp_name(n)]


_REGISTRY_WRITER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from vortex.training.registry import ModelRegistry
    reg = ModelRegistry(sys.argv[1])
    def say(op, v=None):
        print(json.dumps({"op": op, "v": v, "versions": reg.versions(), "active": reg.active_version,
                          "log": len(reg.serving_log())}), flush=True)
    say("start")
    print("ready", flush=True)
    rng = np.random.default_rng(int(sys.argv[2]))
    while True:
        v = reg.register({"w": rng.standard_normal((256, 256)).astype(np.float32)},
                         {"trigger": "kill test", "samples": 1})
        say("register", v)
        if v % 2 == 0:
            reg.set_active(v, f"kill test {v}")
            say("set_active", v)
        if v % 5 == 0:
            reg.cleanup(3)
            say("cleanup", v)
""")


def _next_op(state: dict) -> str:
    """The operation the registry writer was in when it was killed, after printing ``state``."""
    op, v = state["op"], state["v"]
    if op == "register" and v % 2 == 0:
        return "set_active"
    if (op == "register" or op == "set_active") and v % 5 == 0:
        return "cleanup"
    return "register"


def test_kill_9_registry_writer(tmp_path):
    from vortex.training.registry import ModelRegistry, verify_registry

    root = tmp_path / "reg"
    reg = ModelRegistry(root)
    reg.set_active(reg.register({"w": np.zeros((2, 2), np.float32)}), "initial")

    def check(states):
        before = states[-1]
        orphans = len(_temp_files(root))
        reg = ModelRegistry(root)  # opens after any kill ...
        after = {"versions": reg.versions(), "active": reg.active_version, "log": len(reg.serving_log())}
        assert verify_registry(root) == []  # ... and every file verifies
        assert not _temp_files(root)  # temp files of the killed write removed on open
        op, same = _next_op(before), {k: before[k] for k in after}
        if op == "register":  # previous state, or one more version (any number above the others)
            grown = after["versions"][:-1] == before["versions"] and after["versions"][-1] > max(before["versions"])
            assert after == same or (grown and after["active"] == before["active"]
                                     and after["log"] == before["log"]), (before, after)
        elif op == "set_active":
            assert after == same or after == {**same, "active": before["v"], "log": before["log"] + 1}, (before, after)
        else:
            newest = set(before["versions"][-3:])
            last = reg.serving_log()[-1]
            kept = [v for v in before["versions"] if v in newest | {last["to_version"], last["from_version"]}]
            assert after == same or after == {**same, "versions": kept}, (before, after)
        # and the next write works
        v = reg.register({"w": np.ones((2, 2), np.float32)})
        reg.set_active(v, "after the kill")
        return orphans

    tally = _kill_many(_REGISTRY_WRITER, [str(root)], check)
    print("registry writer:", tally)


_LOG_APPENDER = textwrap.dedent("""
    import json, sys
    from vortex.training.registry import ModelRegistry
    reg = ModelRegistry(sys.argv[1])
    print(json.dumps({"entries": len(reg.serving_log())}), flush=True)
    print("ready", flush=True)
    i = 0
    while True:
        reg.set_active(1 + i % 3, f"append {sys.argv[2]}.{i}")
        i += 1
        print(json.dumps({"entries": len(reg.serving_log())}), flush=True)
""")


def test_kill_9_serving_log_append(tmp_path):
    from vortex.training.registry import ModelRegistry, verify_registry

    root = tmp_path / "reg"
    reg = ModelRegistry(root)
    for i in range(3):
        reg.register({"w": np.full((2, 2), i, np.float32)})

    def check(states):
        acked = states[-1]["entries"]
        log = ModelRegistry(root).serving_log()
        assert len(log) in (acked, acked + 1), (acked, len(log))
        assert all(b["from_version"] == a["to_version"] for a, b in zip(log, log[1:]))
        assert verify_registry(root) == []
        ModelRegistry(root).set_active(1, "after the kill")

    tally = _kill_many(_LOG_APPENDER, [str(root)], check, delay=(0.0, 0.1))
    print("serving-log append:", tally, "entries:", len(ModelRegistry(root).serving_log()))


def _expected_rows(seq: np.ndarray, dim: int) -> np.ndarray:
    return (np.cos(seq[:, None] * 0.01 + np.arange(dim)[None, :])).astype(np.float32)


_BUFFER_SAVER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from vortex.training import SampleBuffer
    path, dim = sys.argv[1], 64
    buf = SampleBuffer.load(path) if os.path.exists(path) else SampleBuffer(dim, capacity=20_000)
    print(json.dumps({"next_seq": buf.next_seq}), flush=True)
    print("ready", flush=True)
    while True:
        seq = np.arange(buf.next_seq, buf.next_seq + 500)
        buf.extend(np.cos(seq[:, None] * 0.01 + np.arange(dim)[None, :]).astype(np.float32), seq % 10)
        print(json.dumps({"next_seq": buf.save(path)}), flush=True)
""")


def test_kill_9_buffer_save(tmp_path):
    from vortex.training import SampleBuffer

    path = tmp_path / "buffer.arrow"

    def check(states):
        acked = states[-1]["next_seq"]
        orphans = len(_temp_files(tmp_path))
        if not path.exists():
            assert acked == 0
            return orphans
        buf = SampleBuffer.load(path)  # removes the temp files of killed saves
        assert buf.next_seq in (acked, acked + 500), (acked, buf.next_seq)
        snap = buf.snapshot()
        assert np.array_equal(snap.seq, np.arange(buf.next_seq - len(buf), buf.next_seq))
        assert np.array_equal(snap.features, _expected_rows(snap.seq, 64))
        assert np.array_equal(snap.labels, snap.seq % 10)
        assert not _temp_files(tmp_path)
        return orphans

    tally = _kill_many(_BUFFER_SAVER, [str(path)], check, delay=(0.0, 0.3))
    print("buffer save:", tally)


_SNAPSHOT_WRITER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from vortex.training import SampleBuffer
    path, dim = sys.argv[1], 32
    buf = SampleBuffer(dim, capacity=50_000)
    print(json.dumps({"rows": 0}), flush=True)
    print("ready", flush=True)
    while True:
        seq = np.arange(buf.next_seq, buf.next_seq + 1000)
        buf.extend(np.cos(seq[:, None] * 0.01 + np.arange(dim)[None, :]).astype(np.float32), seq % 10)
        buf.snapshot().write_ipc(path)
        print(json.dumps({"rows": len(buf)}), flush=True)
""")


def test_kill_9_snapshot_write(tmp_path):
    from vortex.training import Snapshot

    path = tmp_path / "snapshot.arrow"

    def check(states):
        acked = states[-1]["rows"]
        orphans = len(_temp_files(tmp_path))
        for name in _temp_files(tmp_path):  # a run directory is removed whole; here, by hand
            os.unlink(tmp_path / name)
        if acked == 0:
            if path.exists():
                path.unlink()  # from an earlier iteration: this child starts a new file
            return orphans
        snap = Snapshot.read_ipc(path)
        assert len(snap) in (acked, acked + 1000), (acked, len(snap))
        assert np.array_equal(snap.seq, np.arange(len(snap)))
        assert np.array_equal(snap.features, _expected_rows(snap.seq, 32))
        path.unlink()
        return orphans

    tally = _kill_many(_SNAPSHOT_WRITER, [str(path)], check, delay=(0.0, 0.4))
    print("snapshot write:", tally)


# ----------------------------------------------------------------------------- the serving process
_SERVING = textwrap.dedent("""
    import sys, time
    import numpy as np
    from vortex.config import BackgroundTrainingConfig
    from vortex.training import BackgroundTrainingCoordinator
    from vortex.training.models import mlp
    home, interval = sys.argv[1], float(sys.argv[2])
    kw = {"in_features": 8, "hidden": 8, "out_features": 3, "seed": 0}
    c = BackgroundTrainingCoordinator(
        BackgroundTrainingConfig(enabled=False, buffer_persist_interval_secs=interval),
        mlp(**kw), "vortex.training.models:mlp", home, 8, factory_kwargs=kw)
    c.start()
    print("ready", flush=True)
    while True:  # the feedback path: one labelled sample per request
        seq = c.buffer.next_seq
        x = np.cos(seq * 0.01 + np.arange(8)).astype(np.float32)
        assert c.add_sample(x, seq % 3, confidence=0.5) == seq
        print(seq, time.monotonic(), flush=True)
        time.sleep(0.002)
""")


def test_kill_9_serving_process_loses_at_most_the_persist_interval(tmp_path):
    """The buffer is saved every buffer_persist_interval_secs from the background: a kill -9
    loses at most that much (plus one save's time; the bound below is generous for a busy
    machine), and a restarted coordinator continues the seq numbering."""
    from vortex.config import BackgroundTrainingConfig
    from vortex.training import BackgroundTrainingCoordinator
    from vortex.training.models import mlp

    interval, slack = 0.5, 1.5
    home = tmp_path / "home"
    kw = {"in_features": 8, "hidden": 8, "out_features": 3, "seed": 0}
    lost_secs = []
    for i in range(4):
        status, out = kill_at_random(f"import sys; sys.argv[1:] = {[str(home), str(interval)]!r}\n" + _SERVING,
                                     delay=(3.0, 4.5), seed=3000 + i, ready="ready", timeout=120)
        assert status == -signal.SIGKILL, out[-2000:]
        pushed = [line.split() for line in out.splitlines() if line[:1].isdigit()]
        assert len(pushed) > 100, out[-2000:]
        last_time = float(pushed[-1][1])
        c = BackgroundTrainingCoordinator(BackgroundTrainingConfig(enabled=False), mlp(**kw),
                                          "vortex.training.models:mlp", home, 8, factory_kwargs=kw)
        kept = c.buffer.next_seq
        must_have = [int(s) for s, t in pushed if float(t) <= last_time - interval - slack]
        assert must_have and max(must_have) < kept, (max(must_have or [0]), kept, int(pushed[-1][0]))
        assert kept <= int(pushed[-1][0]) + 1
        snap = c.buffer.snapshot()
        assert np.array_equal(snap.seq, np.arange(kept - len(snap), kept))
        assert np.array_equal(snap.features, np.cos(snap.seq[:, None] * 0.01 + np.arange(8)).astype(np.float32))
        row = np.cos(kept * 0.01 + np.arange(8)).astype(np.float32)
        assert c.add_sample(row, kept % 3) == kept  # the numbering continues
        c.stop()  # a clean stop saves it: the next child continues from there
        lost = [float(t) for s, t in pushed if int(s) >= kept]
        lost_secs.append(last_time - lost[0] if lost else 0.0)
    print(f"samples lost per kill -9, in seconds of feedback: {[round(x, 3) for x in lost_secs]} "
          f"(interval {interval} s)")


_TRAINING_SERVER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from vortex.config import BackgroundTrainingConfig
    from vortex.training import BackgroundTrainingCoordinator
    from vortex.training.models import mlp
    home, world = sys.argv[1], int(sys.argv[2])
    kw = {"in_features": 16, "hidden": 16, "out_features": 4, "seed": 0}
    c = BackgroundTrainingCoordinator(
        BackgroundTrainingConfig(min_samples_for_training=200, num_epochs=1_000_000, world_size=world),
        mlp(**kw), "vortex.training.models:mlp", home, 16, factory_kwargs=kw)
    rng = np.random.default_rng(0)
    c.add_samples(rng.standard_normal((600, 16)).astype(np.float32), rng.integers(0, 4, 600))
    c.start()
    while len(c.worker_pids()) < world:
        time.sleep(0.01)
    print(json.dumps(c.worker_pids()), flush=True)
    time.sleep(600)
""")


def _worker_log(home) -> str:
    runs = home / "runs"
    return "".join((d / "worker-0.log").read_text() for d in runs.iterdir()
                   if (d / "worker-0.log").exists()) if runs.exists() else ""


@pytest.mark.parametrize("world_size", [1, 2])
def test_workers_die_with_a_killed_serving_process(tmp_path, world_size):
    """Issue 12: a worker outlived its killed coordinator and trained on for up to 600 s."""
    home = tmp_path / "home"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), VORTEX_WORKER_LOG="INFO")
    server = subprocess.Popen([sys.executable, "-c", _TRAINING_SERVER, str(home), str(world_size)],
                              stdout=subprocess.PIPE, text=True, env=env)
    pids: list[int] = []
    try:
        pids = json.loads(server.stdout.readline())
        deadline = time.monotonic() + 120
        while "epoch 2/" not in _worker_log(home):  # mid-training, past start-up
            assert time.monotonic() < deadline and server.poll() is None, _worker_log(home)[-2000:]
            time.sleep(0.05)
        assert all(alive(p) for p in pids)
        server.send_signal(signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + 30  # a bound on liveness, not a speed measurement
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if alive(p)], "workers outlived their coordinator"
    finally:
        server.kill()
        server.wait()
        server.stdout.close()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
