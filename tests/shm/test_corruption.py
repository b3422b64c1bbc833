"""Damaged shared-memory files: every flipped byte and truncation of a segment (closed, and as a
killed writer leaves it) and of the fleet state is detected (a CorruptFileError naming the
file) or harmless, in a child process so that a crash would be a verdict. A dense seeded sample
here; every byte in scripts/fault_sweep.py."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "faults"))
from harness import cases, sweep  # noqa: E402
from shm_loaders import KINDS  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = 1500  # positions per file (x 2 flip masks, + as many truncations)


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_every_corruption_is_detected_or_harmless(tmp_path, kind):
    _, make, rel, loader, acceptable = kind
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    make(str(pristine))
    size = (pristine / rel).stat().st_size
    report = sweep(pristine, rel, loader, cases(size, sample=SAMPLE, seed=14), acceptable=acceptable)
    print(report.summary())
    report.assert_held()
    counts = report.counts()
    assert counts["detected"] > 0.9 * len(report.outcomes), report.summary()
