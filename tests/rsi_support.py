"""Helpers shared by the RSI tests: a small target tree description, tree digests."""

from __future__ import annotations

import hashlib
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "examples", "sample_service")

TINY_PYPROJECT = """
[tool.vortex]
test_command = ["{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
judge = ["tests"]
protected = ["pyproject.toml", "tests/**"]
pythonpath = ["."]

[tool.vortex.sandbox]
timeout_secs = 8
memory_mb = 600
cpu_secs = 10
max_processes = 24
max_file_mb = 4

[[tool.vortex.tunables]]
name = "workers"
file = "conf.toml"
type = "int"
min = 1
max = 16
addresses = { latency_spike = "increase", memory_pressure = "decrease" }

[[tool.vortex.tunables]]
name = "strict"
file = "conf.toml"
type = "bool"
addresses = { prediction_error_spike = "false" }
"""


def tree_digest(root: str) -> dict[str, str]:
    """Path -> sha256 of every file (symlinks by target) under root, caches skipped."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".pytest_cache")]
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
            else:
                with open(full, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out




def append_many(path: str, n: int) -> None:
    """Append n entries to an audit log (a multiprocessing target: it must live in a module
    that child processes can import by name)."""
    from vortex.rsi.audit import AuditLog

    log = AuditLog(path)
    for i in range(n):
        log.append("proc", i=i)
