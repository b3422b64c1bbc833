"""Benchmark helpers shared by every suite.

Each suite puts Vortex and the peer a user would pick instead in one pytest-benchmark
group.  The machine is shared and noisy, so the figure that matters is the ratio measured
side by side in one run: at the end of a timed run this prints, per group, each entry's
median per call and how many times slower than Vortex's entry it is.

Conventions for a benchmark body:

* ``benchmark.extra_info["calls_per_round"] = N`` when one round times a loop of N calls
  (needed for nanosecond-scale calls, where a round's own overhead would dominate);
* the Vortex entry's test name contains ``vortex`` (or sets ``extra_info["subject"] = "vortex"``);
* any other ``extra_info`` entry (a memory figure, say) is printed after the entry's line.
"""

from __future__ import annotations

from collections import defaultdict

# extra_info keys that steer the summary; any other key is a figure printed after the entry
_BOOKKEEPING = {"calls_per_round", "subject"}


def _per_call_seconds(bench) -> float:
    return bench.stats.median / bench.extra_info.get("calls_per_round", 1)


def _is_subject(bench) -> bool:
    return bench.extra_info.get("subject") == "vortex" or "vortex" in bench.name


def _format_seconds(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    groups = defaultdict(list)
    for bench in session.benchmarks:
        if bench.has_error or not bench.stats:
            continue
        groups[bench.group or bench.name].append(bench)
    terminalreporter.section("ratios (median per call; x = times slower than vortex)")
    for group, benches in sorted(groups.items()):
        subject = next((b for b in benches if _is_subject(b)), None)
        terminalreporter.write_line(f"[{group}]")
        for bench in sorted(benches, key=_per_call_seconds):
            line = f"  {bench.name:<60} {_format_seconds(_per_call_seconds(bench)):>10}"
            if subject is not None and bench is not subject:
                line += f"   {_per_call_seconds(bench) / _per_call_seconds(subject):8.2f}x"
            figures = {k: v for k, v in bench.extra_info.items() if k not in _BOOKKEEPING}
            if figures:
                line += "   " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in figures.items())
            terminalreporter.write_line(line)
