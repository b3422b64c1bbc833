"""Processes of a multi-worker service for the Prometheus tests: run as a script in the child,
imported (:func:`start`, :func:`post`, :func:`get`) by the tests.

``worker HOME``: a serving worker. It creates its WorkerSegment under HOME, serves HTTP on a
loopback port (printed on stdout as ``port N``) and, for each ``POST /infer`` whose JSON body is
``{"work_ms": x, "confidence": c, "failed": bool}``, does x ms of work (a sleep), times it and
records the measured latency in its segment with confidence c (counted as failed when
failed, as the ASGI middleware records a 5xx); ``POST /feedback`` pushes one labelled sample.

``exporter HOME``: serves ``GET /metrics`` = ``vortex.monitor.prometheus.exposition(HOME)`` on
a loopback port (printed the same way): what a router or sidecar does for Prometheus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def start(kind: str, home: object) -> tuple[subprocess.Popen, int]:
    """A ``worker`` or ``exporter`` process for ``home``, and its port (kill it when done and
    close its ``stdout``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), kind, str(home)],
                            stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"{kind} process did not start: {line!r}")
    return proc, int(line.split()[1])


def post(port: int, path: str, body: dict) -> dict:
    """POST ``body`` as JSON to a loopback port; the JSON reply."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def get(url: str) -> tuple[bytes, str]:
    """GET ``url``: the body and its Content-Type."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read(), resp.headers["Content-Type"]


def serve(handler: type[BaseHTTPRequestHandler]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def worker(home: str) -> None:
    from vortex.shm import WorkerSegment

    seg = WorkerSegment.create(home, feature_dim=2)

    class Handler(_Quiet):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/infer":
                start = time.perf_counter()
                time.sleep(body["work_ms"] / 1e3)
                latency_ms = (time.perf_counter() - start) * 1e3
                seg.record_sample(latency_ms, body["confidence"], failed=bool(body.get("failed")))
                self.reply(200, json.dumps({"latency_ms": latency_ms}).encode())
            else:
                seg.push([0.0, 1.0], int(body["label"]), 1.0)
                self.reply(200, b"{}")

    serve(Handler)


def exporter(home: str) -> None:
    from vortex.monitor.prometheus import CONTENT_TYPE, exposition

    class Handler(_Quiet):
        def do_GET(self) -> None:
            self.reply(200, exposition(home), CONTENT_TYPE)

    serve(Handler)


if __name__ == "__main__":
    {"worker": worker, "exporter": exporter}[sys.argv[1]](sys.argv[2])
