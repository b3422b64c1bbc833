import pytest
from fleet_processes import start
from shm.conftest import home  # noqa: F401  (the fixture: its segments are removed afterwards)


@pytest.fixture
def processes():
    """``spawn(kind, home) -> (process, port)``: worker and exporter processes of
    tests/fleet_processes.py, killed at the end of the test."""
    procs = []

    def spawn(kind, where):
        proc, port = start(kind, where)
        procs.append(proc)
        return proc, port

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
