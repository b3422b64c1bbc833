"""Damaged objects replicas share: every flipped byte and truncation of the control-plane
lease and a dense seeded sample of a replica's sample and record spools are detected (a CorruptFileError naming
the object) or harmless, in a child process so that a crash would be a verdict. Every byte of
both in scripts/fault_sweep.py."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "faults"))
from harness import sweep_kind  # noqa: E402
from replica_loaders import KINDS  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLE = 600  # positions per object (x 2 flip masks, + as many truncations); the lease has fewer bytes


@pytest.mark.parametrize("kind", KINDS, ids=[k[0] for k in KINDS])
def test_every_corruption_is_detected_or_harmless(tmp_path, kind):
    _, make, rel, loader, acceptable = kind
    report = sweep_kind(tmp_path, make, rel, loader, sample=SAMPLE, seed=3, acceptable=acceptable)
    report.assert_held()
    assert report.counts()["detected"] == len(report.outcomes), report.summary()  # sealed: every case
