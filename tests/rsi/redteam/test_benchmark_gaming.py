"""Benchmark gaming: a candidate that is no faster (its ``work`` is the original's, or slower)
tries to be judged an improvement. None may come back ``improved``; the forged ones are
rejected for the forgery."""

import pytest

from redteam_support import GOOD

SLOWER = GOOD.replace("return sum(i * i for i in range(n))",
                      "return sum(i * i for i in range(n)) + 0 * sum(i for i in range(n))")

#: name -> (code of the candidate mod.py, reason in the errors or None: only "not improved")
GAMES = {
    "rewrites bench.py while the tests run": (GOOD + '''
for _path in ("bench.py", "/vortex/tree/bench.py"):
    try:
        with open(_path, "w") as _fh:
            _fh.write("print('{\\"latency_ms\\": {\\"value\\": 0.001, \\"better\\": \\"lower\\"}}')")
        print("REWROTE", _path)
    except OSError as _exc:
        print("bench.py not writable:", _exc)
''', None),
    "slows the baseline tree down": (GOOD + '''
import glob
_guesses = ["/*/baseline/mod.py", "/*/*/baseline/mod.py", "/tmp/**/baseline/mod.py", "/vortex/*/mod.py",
            "/proc/*/root/vortex/*/mod.py", "/proc/*/cwd/mod.py", "/dev/shm/**/mod.py"]
for _path in sorted({p for g in _guesses for p in glob.glob(g, recursive=True)}):
    try:
        with open(_path, "a") as _fh:
            _fh.write("\\nimport time\\n_w = work\\ndef work(n):\\n    time.sleep(0.05)\\n    return _w(n)\\n")
        print("SLOWED", _path)
    except OSError as _exc:
        print("baseline not writable:", _path, _exc)
''', None),
    "exit handler prints a better result": (SLOWER + '''
import atexit, json as _json
atexit.register(lambda: print(_json.dumps({"latency_ms": {"value": 0.0001, "better": "lower"}})))
''', None),
    "prints a second, better JSON object": (SLOWER + '''
import json as _json
print(_json.dumps({"latency_ms": {"value": 0.0001, "better": "lower"}}))
''', "exactly one is required"),
    "writes a better result to descriptor 1 directly": (SLOWER + '''
import json as _json
os.write(1, (_json.dumps({"latency_ms": {"value": 0.0001, "better": "lower"}}) + "\\n").encode())
''', None),
    "patches the clock": (GOOD + '''
import time as _time
_real = _time.perf_counter
_time.perf_counter = lambda: _real() / 2
''', "replaced parts of the judge"),
    "patches print to rewrite the value": (GOOD + '''
import builtins
_print = builtins.print
def _lying_print(*args, **kw):
    _print(*[a.replace('"value": ', '"value": 0.000') if isinstance(a, str) else a for a in args], **kw)
builtins.print = _lying_print
''', "replaced parts of the judge"),
    "swaps sys.stdout": (GOOD + '''
import sys
class _Rewriter:
    def __init__(self, real):
        self.real = real
    def write(self, text):
        return self.real.write(text.replace('"value": ', '"value": 0.000'))
    def flush(self):
        self.real.flush()
sys.stdout = _Rewriter(sys.stdout)
''', "replaced parts of the judge"),
    "unchanged code (a comment)": ("# a comment\n" + GOOD, None),
}


@pytest.mark.parametrize("name", sorted(GAMES))
def test_gamed_benchmark_is_not_an_improvement(attack, name):
    code, reason = GAMES[name]
    res = attack.run(attack.mod_diff(code), bench=True, repeats=4, confidence=0.999)
    assert res.improved is not True, (name, res.performance_delta, res.delta_interval)
    if reason is None:
        assert not res.errored and res.benchmark_runs == 4, (name, res.errors)
        assert "REWROTE" not in res.test_output and "SLOWED" not in res.test_output
    else:
        assert not res.passed and not res.errored and reason in " ".join(res.errors), (name, res.errors)
