"""examples/http_service under a real ``uvicorn --workers 2``, over loopback HTTP (httpx).

* predictions and feedback flow; training on the control plane produces a swap that every
  worker follows within a second; an RSI apply (the engine's journaled applier) of the
  tunables file is seen by every worker;
* ``kill -9`` of the ``vortex control`` sidecar, of a plain worker (uvicorn replaces it) and of
  the worker that took the control plane over, while requests flow: no request fails beyond
  those in flight on a killed process, no HTTP error at all, and every acknowledged feedback
  is in the control plane's saved buffer afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from proc_support import alive

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(REPO, "examples", "http_service")

pytestmark = pytest.mark.slow

WORKERS = 2
CLIENTS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home, **extra) -> dict:
    path = [EXAMPLE] + [p for p in sys.path if p]  # the vortex this test imported, not src/
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "VORTEX_HOME": str(home),
            "VORTEX_INITIAL_EPOCHS": "0", "OMP_NUM_THREADS": "1", **extra}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except FileNotFoundError:
        return []
    out = []
    for k in kids:
        try:
            with open(f"/proc/{k}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(k)
        except FileNotFoundError:
            pass
    return out


class Server:
    """``uvicorn app:app --workers 2`` on a free loopback port."""

    def __init__(self, home, **env) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", EXAMPLE, "--workers", str(WORKERS),
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--timeout-graceful-shutdown", "10"],
            env=_env(home, **env), start_new_session=True)

    def workers(self) -> list[int]:
        return _children(self.proc.pid)

    def statuses(self, client: httpx.Client, want: set[int], timeout: float = 60.0) -> dict[int, dict]:
        """The status of every worker in ``want`` (asked until each has answered once)."""
        seen: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while set(seen) < want:
            assert time.monotonic() < deadline, f"workers {want - set(seen)} never answered"
            with httpx.Client(base_url=self.url, timeout=10) as fresh:  # new connection, any worker
                s = fresh.get("/vortex/status").json()
            seen[s["worker"]["pid"]] = s
        return seen

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every worker answers and serves a registered version (the control plane
        registers the initial model as version 1; until a worker follows it, its answers name
        no version)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "uvicorn exited"
            assert time.monotonic() < deadline, "uvicorn did not start"
            pids = self.workers()
            if len(pids) == WORKERS:
                try:
                    with httpx.Client(base_url=self.url, timeout=5) as c:
                        statuses = self.statuses(c, set(pids), timeout=30)
                    if all(s["worker"]["model_version"] is not None for s in statuses.values()):
                        return
                except (httpx.HTTPError, AssertionError):
                    pass
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def _serve_one(client: httpx.Client, x, y, episode: int) -> tuple[dict, httpx.Response]:
    p = client.post("/predict", json={"features": x.tolist()})
    assert p.status_code == 200, p.text
    f = client.post("/vortex/feedback", json={"request_id": p.json()["request_id"], "label": int(y),
                                              "episode": episode})
    assert f.status_code == 200, f.text
    return p.json(), f


def _control_pid(home) -> int | None:
    try:
        with open(os.path.join(home, "control.json")) as f:
            return json.load(f)["control"]["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def test_feedback_trains_a_version_every_worker_follows_and_tunables_reach_every_worker(home, tmp_path, digits):
    from vortex.rsi.apply import Applier
    from vortex.rsi.diffs import make_diff
    from vortex.training.registry import ModelRegistry

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "tunables.toml").write_text("threshold = 0.5  # decision threshold\n")
    server = Server(home, VORTEX_MIN_SAMPLES="300", VORTEX_TUNABLES=str(tree / "tunables.toml"),
                    VORTEX_DASHBOARD_TOKEN="example-token-1")
    try:
        server.wait_ready()
        x, y = digits
        versions = []
        errors: list[BaseException] = []
        events: list[tuple[str, dict]] = []

        def listen() -> None:  # server-sent events, from whichever worker takes the connection
            with httpx.Client(base_url=server.url, timeout=None) as c, c.stream("GET", "/vortex/events") as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                event = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        events.append((event, json.loads(line[6:])))
                        if event == "swap":
                            return

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()

        def client_loop(k: int) -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    for i in range(k, 360, CLIENTS):
                        answer, _ = _serve_one(c, x[i], y[i], i)
                        versions.append(answer["model_version"])
            except (AssertionError, httpx.HTTPError) as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        registry = ModelRegistry(home / "models")
        # every answer names a version that served (how many runs the 360 feedbacks trigger
        # depends on the machine's speed)
        served = set(registry.versions()) | {e["to_version"] for e in registry.serving_log()}
        assert len(versions) == 360 and set(versions) <= served, (sorted(set(versions)), served)

        deadline = time.monotonic() + 240
        while (registry.active_version or 0) < 2:
            assert time.monotonic() < deadline, "training never swapped a new version in"
            time.sleep(0.2)
        swap = registry.serving_log()[-1]
        active = swap["to_version"]
        # the registry write is seen here first: a worker polls it every 0.1 s, so wait until
        # each one reports the version (a liveness bound), then check how late it followed
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while True:
                statuses = server.statuses(c, set(server.workers()))
                if all(s["worker"]["model_version"] == active for s in statuses.values()):
                    break
                assert time.monotonic() < deadline, statuses
                time.sleep(0.1)
        for pid, s in statuses.items():  # each followed within a second of the registry write
            assert s["worker"]["swapped_at"] - swap["time"] < 1.0, (pid, s["worker"], swap)
        lags = [s["worker"]["swapped_at"] - swap["time"] for s in statuses.values()]
        print(f"version {active}: workers followed {[round(lag, 3) for lag in lags]} s after the registry write")
        listener.join(10)
        assert ("swap", swap) in events, events

        # the dashboard mounted under /vortex/ui by every worker shows the version that serves,
        # and refuses a swap without the token (the registry unchanged)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/vortex/ui/").status_code == 200
            models = c.get("/vortex/ui/api/state").json()["models"]
            assert models["active_version"] == active
            assert [v["version"] for v in models["versions"]] == [v["version"] for v in registry.list_versions()]
            refused = c.post("/vortex/ui/api/models/1/swap", json={"name": "x", "expect_active": active},
                             headers={"Origin": server.url})
            assert refused.status_code == 403 and "token" in refused.json()["error"], refused.text
        assert registry.active_version == active

        Applier(tree, home).apply("test-tunable", make_diff(
            "tunables.toml", "threshold = 0.5  # decision threshold\n", "threshold = 0.7  # decision threshold\n"))
        applied = time.time()
        deadline = time.monotonic() + 30
        pending = set(server.workers())
        while pending:
            assert time.monotonic() < deadline, f"workers {pending} never saw the applied tunable"
            with httpx.Client(base_url=server.url, timeout=10) as fresh:
                s = fresh.get("/vortex/status").json()["worker"]
            if s["tunables"] == {"threshold": 0.7}:
                pending.discard(s["pid"])
        print(f"tunable seen by every worker {time.time() - applied:.2f} s after the apply (polling included)")
    finally:
        server.stop()
    assert server.proc.returncode is not None


# No training, and a buffer that holds every feedback the test can send (~1,100 a second here):
# a full buffer makes room by dropping its oldest samples, which is not a loss
KEEP_ALL = {"VORTEX_TRAIN": "0", "VORTEX_BUFFER_CAPACITY": "200000"}


def test_kill9_of_workers_and_control_planes_loses_no_acknowledged_feedback(home, digits):
    x, y = digits
    sidecar = subprocess.Popen([sys.executable, "-c", "import sys; from vortex.cli import main; sys.exit(main())",
                                "control", "--spec", "app:SPEC"],
                               env=_env(home, **KEEP_ALL), start_new_session=True)
    server = Server(home, **KEEP_ALL)
    acknowledged: list[int] = []
    failures: list[BaseException] = []
    http_errors: list[str] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while _control_pid(home) != sidecar.pid:
            assert time.monotonic() < deadline and sidecar.poll() is None, "the sidecar never took control"
            time.sleep(0.2)
        server.wait_ready()
        counter = iter(range(10**9))
        lock = threading.Lock()

        def client_loop() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                while not stop.is_set():
                    with lock:
                        k = next(counter)
                    try:
                        p = c.post("/predict", json={"features": x[k % len(x)].tolist()})
                        if p.status_code != 200:
                            http_errors.append(f"predict {p.status_code} {p.text}")
                            continue
                        f = c.post("/vortex/feedback", json={"request_id": p.json()["request_id"],
                                                             "label": int(y[k % len(y)]), "episode": k})
                        if f.status_code != 200:
                            http_errors.append(f"feedback {f.status_code} {f.text}")
                            continue
                        acknowledged.append(k)
                    except httpx.TransportError as exc:  # the connection's process was killed
                        failures.append(exc)

        threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
        for t in threads:
            t.start()

        def wait_for(condition, what: str, timeout: float = 60.0):
            deadline = time.monotonic() + timeout
            while not (value := condition()):
                assert time.monotonic() < deadline, what
                time.sleep(0.1)
            return value

        time.sleep(2)
        os.kill(sidecar.pid, signal.SIGKILL)
        sidecar.wait(10)
        first = wait_for(lambda: (pid := _control_pid(home)) in server.workers() and pid,
                         "no worker took the control plane over from the killed sidecar")
        time.sleep(1)
        plain = next(p for p in server.workers() if p != first)
        os.kill(plain, signal.SIGKILL)
        wait_for(lambda: len(server.workers()) == WORKERS and plain not in server.workers(),
                 "uvicorn did not replace the killed worker")
        time.sleep(2)
        os.kill(first, signal.SIGKILL)
        second = wait_for(lambda: (pid := _control_pid(home)) not in (None, first) and alive(pid) and pid,
                          "no worker took the control plane over from the killed one")
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(60)
        assert second in server.workers()
    finally:
        stop.set()
        server.stop()
        if sidecar.poll() is None:
            sidecar.kill()
            sidecar.wait(10)

    from vortex.training.buffer import Snapshot

    print(f"acknowledged feedbacks {len(acknowledged)}, requests failed in flight {len(failures)}")
    assert not http_errors, http_errors[:5]
    # at most one request in flight per client connection on each of the two killed workers
    assert len(failures) <= 2 * CLIENTS, failures
    assert len(acknowledged) > 50
    saved = Snapshot.read_ipc(home / "buffer.arrow")
    missing = set(acknowledged) - set(saved.episode.tolist())
    assert not missing, f"{len(missing)} acknowledged feedbacks lost: {sorted(missing)[:10]}"


def _readme_block(starts_with: str) -> str:
    """The ``sh`` block of examples/http_service/README.md whose first line starts so."""
    with open(os.path.join(EXAMPLE, "README.md")) as f:
        blocks = f.read().split("```sh\n")[1:]
    found = [b.split("```")[0] for b in blocks if b.startswith(starts_with)]
    assert len(found) == 1, f"README has {len(found)} sh blocks starting with {starts_with!r}"
    return found[0]


def test_the_readmes_predict_and_feedback_commands_work_as_written(home):
    """The README's curl commands, run by bash as a newcomer pastes them (only the port
    differs), against the example under uvicorn: a prediction with the request id sent, then
    its feedback accepted, each answer JSON of the shape the README shows under it."""
    block = _readme_block("x=$(python")
    server = Server(home)
    try:
        server.wait_ready()
        env = {**_env(home), "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("localhost:8000", f"127.0.0.1:{server.port}")],
                             env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    answers, text, decoder = [], out.stdout.strip(), json.JSONDecoder()
    while text:  # curl -s ends a body without a newline: the answers run together
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].strip()
    shown = [json.loads(line.lstrip("# ")) for line in block.splitlines() if line.startswith("# {")]
    assert [set(a) for a in answers] == [set(s) for s in shown], (answers, shown)
    prediction, feedback = answers
    assert prediction["request_id"] == feedback["request_id"] == "demo-1"
    assert prediction["class"] in range(10) and 0.0 <= feedback["error"] <= 1.0
