"""Corruption sweeps over the RSI state files: every damaged copy is harmless, detected
(a CorruptFileError naming the file, nothing written from it) or a documented recovery.

A dense seeded sample runs here; ``python scripts/fault_sweep.py`` runs every byte.
"""

from __future__ import annotations

import os

import pytest

from harness import cases, sweep
from rsi_loaders import KINDS

SAMPLE = 160  # positions per kind: the first and last 64 bytes plus an even spread


@pytest.mark.parametrize("name,make,rel,loader,acceptable", KINDS, ids=[k[0] for k in KINDS])
def test_damaged_rsi_state_is_detected_or_harmless(tmp_path, name, make, rel, loader, acceptable):
    pristine = str(tmp_path / "pristine")
    make(pristine)
    size = os.path.getsize(os.path.join(pristine, rel))
    report = sweep(pristine, rel, loader, cases(size, sample=SAMPLE, seed=12), acceptable=acceptable)
    print(report.summary())
    report.assert_held()
    counts = report.counts()
    assert counts["detected"] > 0.9 * len(report.outcomes)  # checksums: hardly anything slips by
