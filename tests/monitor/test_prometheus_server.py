"""A real Prometheus server (Debian's package) scrapes the exposition of several worker
processes of one home, and PromQL answers what the client sent: the request count, and a p99
that histogram_quantile computes from the merged classic buckets."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from fleet_processes import post

from vortex.shm import FleetReader
from vortex.shm.histogram import LATENCY_LE_SECONDS

HERE = os.path.dirname(os.path.abspath(__file__))
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="the Prometheus server is missing: install Debian's prometheus "
                               "package (scripts/_venv.sh does where it runs as root)")

REQUESTS, SLOW, FEEDBACK = 400, 12, 10
P99 = 'histogram_quantile(0.99, sum by (le) (rate(vortex_request_duration_seconds_bucket[1m])))'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server on loopback scraping one target every second, storing in a temp
    dir."""

    def __init__(self, tmp_path, target_port: int, metrics_path: str = "/metrics") -> None:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: vortex\n"
            f"    metrics_path: {metrics_path}\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
        self.port = free_port()
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_for(lambda: self.query('up{job="vortex"}') == [1.0], "the first scrape")

    def query(self, promql: str) -> list[float] | None:
        """The values of an instant query's vector (None while the server is not up)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                data = json.loads(resp.read())
        except OSError:
            return None
        assert data["status"] == "success", data
        return [float(r["value"][1]) for r in data["data"]["result"]]

    def wait_for(self, predicate, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_promql_over_a_scraped_multi_worker_home(tmp_path, home, processes):
    workers = [processes("worker", home) for _ in range(3)]
    _, exporter_port = processes("exporter", home)
    prom = Prometheus(tmp_path, exporter_port)
    try:
        prom.wait_for(lambda: prom.query("sum(vortex_requests_total)") == [0.0], "a zero count")
        # the client: 3% of the requests take ~60 ms of work, the rest ~1 ms, over 3 workers
        slow = set(np.random.default_rng(3).choice(REQUESTS, SLOW, replace=False).tolist())
        latencies_ms = [post(workers[i % 3][1], "/infer",
                             {"work_ms": 60.0 if i in slow else 1.0, "confidence": 0.9})["latency_ms"]
                        for i in range(REQUESTS)]
        for i in range(FEEDBACK):
            post(workers[i % 3][1], "/feedback", {"label": i})
        workers[0][0].send_signal(signal.SIGKILL)  # its counts must stay
        workers[0][0].wait(timeout=30)

        prom.wait_for(lambda: prom.query("sum(vortex_requests_total)") == [float(REQUESTS)],
                      f"sum(vortex_requests_total) == {REQUESTS}")
        assert prom.query("sum(vortex_feedback_total)") == [float(FEEDBACK)]
        assert prom.query('sum(vortex_workers{state="exited"})') == [1.0]

        # p99: in the classic bucket that holds the true p99 of what the workers measured
        true_p99 = float(np.quantile(np.array(latencies_ms) / 1e3, 0.99, method="inverted_cdf"))
        bounds = (0.0,) + LATENCY_LE_SECONDS + (math.inf,)
        k = next(k for k in range(1, len(bounds)) if true_p99 <= bounds[k])
        (p99,) = prom.query(P99)
        assert bounds[k - 1] < p99 <= bounds[k], (p99, true_p99)
        assert 0.05 < p99 <= 0.1  # the ~60 ms requests, not the ~1 ms ones

        # the control plane folds the dead worker: Prometheus sees no counter reset
        with FleetReader(home) as fleet:
            fleet.read_new()
            assert len(fleet.commit()) == 1
        prom.wait_for(lambda: prom.query("sum(vortex_workers_folded_total)") == [1.0],
                      "the folded worker in a scrape")
        assert prom.query("sum(vortex_requests_total)") == [float(REQUESTS)]
        assert prom.query("sum(resets(vortex_requests_total[1m]))") == [0.0]
        assert prom.query("sum(resets(vortex_request_duration_seconds_count[1m]))") == [0.0]
    finally:
        prom.close()


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "http_service")


@pytest.mark.slow
def test_promql_over_the_example_app_under_uvicorn_workers(tmp_path, home):
    """examples/http_service under ``uvicorn --workers 2``, scraped at ``/vortex/metrics``: the
    request count is what the client sent (every predict, whichever worker answered it), the
    feedback count too, and the p99 is no more than the client's (which adds the network)."""
    from sklearn.datasets import load_digits

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([EXAMPLE, *sys.path]), "VORTEX_HOME": str(home),
           "VORTEX_INITIAL_EPOCHS": "0", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", EXAMPLE, "--workers", "2",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, start_new_session=True)
    x = load_digits().data / 16.0
    sent, latencies = 0, []

    def predict(i: int) -> dict:
        nonlocal sent
        start = time.perf_counter()
        reply = post(port, "/predict", {"features": x[i % len(x)].tolist()})
        latencies.append(time.perf_counter() - start)
        sent += 1
        return reply

    prom = None
    try:
        deadline = time.monotonic() + 180
        while True:  # until a worker answers
            assert server.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            try:
                predict(0)
                break
            except OSError:
                time.sleep(0.3)
        prom = Prometheus(tmp_path, port, "/vortex/metrics")
        ids = [predict(i)["request_id"] for i in range(300)]
        for i, rid in enumerate(ids[:20]):
            post(port, "/vortex/feedback", {"request_id": rid, "label": int(i % 10)})
        # one scrape may land between two of the feedbacks: wait for a scrape after them all
        prom.wait_for(lambda: prom.query("sum(vortex_requests_total)") == [float(sent)]
                      and prom.query("sum(vortex_feedback_total)") == [20.0],
                      f"sum(vortex_requests_total) == {sent} and sum(vortex_feedback_total) == 20")
        assert prom.query("sum(vortex_request_errors_total)") == [0.0]
        (p99,) = prom.query(P99)
        client_p99 = float(np.quantile(latencies, 0.99, method="inverted_cdf"))
        upper = next(b for b in LATENCY_LE_SECONDS + (math.inf,) if client_p99 <= b)
        assert 0.0 < p99 <= upper, (p99, client_p99)
    finally:
        if prom is not None:
            prom.close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
