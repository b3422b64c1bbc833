"""Full corruption sweeps: every byte of each file kind flipped (two masks) and every truncation.

The test suite runs a dense seeded sample of the same cases (``tests/faults/``); this runs them
all, each in a child process through ``tests/faults/harness.py`` (so a crash is a verdict, not
the end of the sweep), and prints per file kind how many cases were detected, harmless,
recovered, and how many failed (silent, wrong_error, crash)::

    PYTHONPATH=$PWD/src python scripts/fault_sweep.py                 # every kind, every case
    PYTHONPATH=$PWD/src python scripts/fault_sweep.py --sample 2000 serving_log.jsonl

Exit status 1 if a case of a format Vortex writes today failed. The table below is a list of
(name, make the pristine directory, the file to damage, loader, acceptable recovery), one
section per area.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests", "faults"), os.path.join(ROOT, "tests")]

from harness import cases, sweep  # noqa: E402

TABLE: list[tuple] = []
#: kinds whose failures are reported but expected (formats written before checksums existed)
INFORMATIONAL: set[str] = set()

# --- training state: registry metadata, serving log, weights, saved buffer, run snapshot ---
import training_loaders  # noqa: E402

TABLE += [(name, *spec) for name, spec in training_loaders.KINDS.items()]
TABLE += [(name, *spec) for name, spec in training_loaders.UNSEALED_KINDS.items()]
INFORMATIONAL |= set(training_loaders.UNSEALED_KINDS)
# --- end of training state ---

# --- RSI state: audit log and its head, apply journal, applied record, queued proposal ---
import rsi_loaders  # noqa: E402

TABLE += rsi_loaders.KINDS
# --- end of RSI state ---

# --- shared memory: a worker's segment (closed, and as a killed writer leaves it), fleet state ---
import shm_loaders  # noqa: E402

TABLE += shm_loaders.KINDS
# --- end of shared memory ---

# --- replicas across machines: the control-plane lease, a replica's sample and record spools ---
import replica_loaders  # noqa: E402

TABLE += replica_loaders.KINDS
# --- end of replicas ---


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"file kinds to sweep (default all): {[t[0] for t in TABLE]}")
    p.add_argument("--sample", type=int, default=None, help="positions per kind (default: every byte)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    unknown = set(args.names) - {t[0] for t in TABLE}
    if unknown:
        p.error(f"unknown file kinds {sorted(unknown)}; known: {[t[0] for t in TABLE]}")
    failed = 0
    totals = {"cases": 0, "held": 0}
    for name, make, rel, loader, acceptable in TABLE:
        if args.names and name not in args.names:
            continue
        with tempfile.TemporaryDirectory(prefix="vtx-sweep-") as tmp:
            pristine = os.path.join(tmp, "pristine")
            os.mkdir(pristine)
            make(pristine)
            size = os.path.getsize(os.path.join(pristine, rel))
            t0 = time.monotonic()
            report = sweep(pristine, rel, loader, cases(size, sample=args.sample, seed=args.seed),
                           acceptable=acceptable, timeout=6 * 3600)
        bad = report.failures()
        totals["cases"] += len(report.outcomes)
        totals["held"] += len(report.outcomes) - len(bad)
        note = " [informational]" if name in INFORMATIONAL else ""
        print(f"{name}{note}: {report.summary().split(': ', 1)[1]} ({size} bytes, "
              f"{time.monotonic() - t0:.0f} s)", flush=True)
        for o in bad[:10]:
            print(f"    {o.case}: {o.verdict}: {o.detail[:200]}")
        if bad and name not in INFORMATIONAL:
            failed += 1
    print(f"total: {totals['cases']} cases, {totals['held']} held")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
