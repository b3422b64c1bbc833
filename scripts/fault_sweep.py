"""Full corruption sweeps: every byte of each file kind flipped (two masks) and the file cut at
every length, each case loaded in a child process (see tests/faults/harness.py).

    python scripts/fault_sweep.py                   # every kind, every byte
    python scripts/fault_sweep.py --only "audit log" --sample 500

The tests run a dense sample of the same table (tests/faults/test_*_corruption.py). Exit status
1 if any case was silent, a wrong error or a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FAULTS = os.path.join(os.path.dirname(HERE), "tests", "faults")
sys.path[:0] = [FAULTS, os.path.dirname(FAULTS), os.path.join(os.path.dirname(HERE), "src")]

from harness import cases, sweep  # noqa: E402
from rsi_loaders import KINDS as RSI_KINDS  # noqa: E402

# (name, make the pristine directory, file damaged (relative), loader, acceptable recovery)
TABLE = [*RSI_KINDS]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="kind name (repeatable); default: all")
    ap.add_argument("--sample", type=int, default=None, help="positions per kind (default: every byte)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the counts per kind to this file")
    args = ap.parse_args(argv)
    names = [k[0] for k in TABLE]
    for name in args.only or []:
        if name not in names:
            ap.error(f"--only {name!r}: not a kind; choose from {names}")
    failed, counts = 0, {}
    for name, make, rel, loader, acceptable in TABLE:
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="vtx-sweep-") as work:
            pristine = os.path.join(work, "pristine")
            make(pristine)
            size = os.path.getsize(os.path.join(pristine, rel))
            t0 = time.monotonic()
            report = sweep(pristine, rel, loader, cases(size, sample=args.sample, seed=args.seed),
                           acceptable=acceptable, timeout=24 * 3600)
        counts[name] = {"bytes": size, "cases": len(report.outcomes), **report.counts(),
                        "secs": round(time.monotonic() - t0, 1)}
        print(f"{name}: {report.summary()} ({counts[name]['secs']} s)", flush=True)
        for o in report.failures()[:20]:
            print(f"  FAIL {o.case}: {o.verdict}: {o.detail[:200]}")
        failed += len(report.failures())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(counts, fh, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
