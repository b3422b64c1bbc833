"""The red-team suite's target (tests/rsi/redteam/) and its checks from outside.

The target is a small tree whose real tests fail on a broken ``mod.add`` and whose benchmark
measures ``mod.work``. Each attack is a candidate ``mod.py`` (plus files it adds) that tries to
escape, leak or game the judge; it tags everything it starts with a per-test token (in its
environment, which children inherit). After every ``Sandbox.test`` the fixture checks, from the
host: the real tree byte-identical, the sandbox directory empty, no file with the token under
/tmp, /var/tmp, /dev/shm, /root or in the cgroup tree, no process carrying the token, the host's
kernel settings (core_pattern, hostname, SysV segments) unchanged, and no host secret (a 0600
root file, /etc/shadow's entries, an environment variable of the Vortex process) anywhere in
the stored result.
"""

from __future__ import annotations

import glob
import json
import os
import socket
from dataclasses import dataclass, field

from jail_support import processes_with_settled, read_host, sysv_shm_keys
from rsi_support import tree_digest
from vortex.rsi.diffs import make_diff
from vortex.rsi.sandbox import Sandbox, TestResult
from vortex.rsi.settings import load_settings

GOOD = '''
def add(a, b):
    return a + b


def work(n):
    return sum(i * i for i in range(n))
'''
BROKEN = GOOD.replace("return a + b", "return a - b")

PYPROJECT = """
[tool.vortex]
test_command = ["{python}", "-m", "pytest", "-q", "-s", "tests"]  # -s: the attacks print what they saw
judge = ["tests", "bench.py"]
protected = ["pyproject.toml", "tests/**", "bench.py"]
pythonpath = ["."]
%(bench)s
[tool.vortex.sandbox]
timeout_secs = 10
memory_mb = 600
cpu_secs = 10
max_processes = 24
max_file_mb = 4
tmp_mb = 16
shm_mb = 8
max_output_kb = 64
"""
BENCH = 'benchmark_command = ["{python}", "bench.py"]\n[tool.vortex.benchmark]\nprimary = "latency_ms"\n'
TESTS = '''import mod


def test_add():
    assert mod.add(2, 3) == 5


def test_add_negative():
    assert mod.add(-2, -3) == -5


def test_work():
    assert mod.work(4) == 14
'''
BENCH_PY = '''import json
import time

import mod

times = []
for _ in range(30):
    t0 = time.perf_counter()
    mod.work(20000)
    times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"latency_ms": {"value": times[3] * 1e3, "better": "lower"}}))
'''


def new_file(path: str, text: str, mode: str = "100644") -> str:
    """A git diff creating ``path``."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    body = "".join(f"+{line}\n" for line in lines)
    return (f"diff --git a/{path} b/{path}\nnew file mode {mode}\n--- /dev/null\n+++ b/{path}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n{body}")


@dataclass
class Attack:
    """One red-team target: its tree, token, secrets, and a runner that checks the outside."""

    tree: str
    token: str
    base_dir: str
    host_secret: str
    env_secret: str
    secret_path: str
    results: list[TestResult] = field(default_factory=list)

    def mod_diff(self, code: str) -> str:
        """A diff replacing mod.py by ``code``, which first names its process after the token
        (forked children keep the name) and puts it in its environment (executed ones keep it)."""
        tag = (f"import ctypes, os\nos.environ['VXRT'] = {self.token!r}\n"
               f"ctypes.CDLL(None).prctl(15, {self.token.encode()!r}, 0, 0, 0)\n")
        return make_diff("mod.py", GOOD, tag + code)

    def run(self, diff: str, *, bench: bool = False, repeats: int = 2, **kw) -> TestResult:
        before_tree = tree_digest(self.tree)
        before_kernel = _kernel_state()
        if bench:
            write_pyproject(self.tree, bench=True)
        sandbox = Sandbox(load_settings(self.tree), base_dir=self.base_dir)
        try:
            res = sandbox.test(diff, repeats=repeats, **kw)
        finally:
            if bench:
                write_pyproject(self.tree, bench=False)
        self.results.append(res)
        assert tree_digest(self.tree) == before_tree, "the real tree changed"
        assert os.listdir(self.base_dir) == [], "files left in the sandbox directory"
        left = [p for d in ("/tmp", "/var/tmp", "/dev/shm", "/root", "/sys/fs/cgroup", "/sys/fs/cgroup/*")
                for p in glob.glob(os.path.join(d, f"*{self.token}*"))]
        assert left == [], f"files left outside the sandbox: {left}"
        assert processes_with_settled(self.token, wait=5.0) == [], "processes outlived the test"
        assert _kernel_state() == before_kernel, "a host kernel setting changed"
        stored = json.dumps(res.to_dict())
        for secret in self.secrets():
            assert secret not in stored, f"a host secret reached the stored result: {secret[:12]}..."
        return res

    def secrets(self) -> list[str]:
        out = [self.host_secret, self.env_secret]
        try:
            out += [line for line in read_host("/etc/shadow").decode().splitlines() if len(line) > 16]
        except OSError:
            pass
        return out


#: Host kernel settings an escaped candidate would want to change (kernel/core_pattern runs a
#: command as host root on the next crash).
KNOBS = ("kernel/core_pattern", "kernel/hostname", "kernel/domainname", "kernel/modprobe",
         "kernel/pid_max", "vm/overcommit_memory", "net/ipv4/ip_forward")


def _kernel_state() -> dict[str, object]:
    state: dict[str, object] = {"hostname": socket.gethostname(), "shm": sysv_shm_keys()}
    for knob in KNOBS:
        try:
            state[knob] = read_host(f"/proc/sys/{knob}")
        except OSError:
            pass
    return state


def write_pyproject(root: str, bench: bool) -> None:
    with open(os.path.join(root, "pyproject.toml"), "w") as fh:
        fh.write(PYPROJECT % {"bench": BENCH if bench else ""})
