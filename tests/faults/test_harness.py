"""The fault harness itself: each verdict is reached, and a crash does not end the sweep."""

from __future__ import annotations

import signal

from harness import Case, cases, kill_at_random, sweep


def test_every_verdict_and_a_crash_mid_sweep(tmp_path):
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    (pristine / "data.bin").write_bytes(bytes([0x56, 0x01, 0x02, 10, 11, 12, 13, 0, 0, 0]))
    todo = [Case("flip", 1), Case("flip", 0), Case("flip", 2), Case("flip", 4), Case("flip", 8),
            Case("truncate", 5), Case("flip", 1, 0x02)]
    report = sweep(pristine, "data.bin", "toy_loaders:load", todo)
    verdicts = [o.verdict for o in report.outcomes]
    assert verdicts == ["crash", "detected", "wrong_error", "silent", "harmless", "detected", "crash"]
    assert "SIGSEGV" in report.outcomes[0].detail
    assert len(report.failures()) == 4
    assert (pristine / "data.bin").read_bytes()[:3] == bytes([0x56, 0x01, 0x02])  # untouched


def test_acceptable_marks_a_documented_recovery(tmp_path):
    pristine = tmp_path / "p"
    pristine.mkdir()
    (pristine / "data.bin").write_bytes(bytes([0x56, 0x01, 0x02, 10, 11, 12, 13, 0]))
    report = sweep(pristine, "data.bin", "toy_loaders:load", [Case("flip", 3)],
                   acceptable=lambda got, base: len(got["payload"]) == len(base["payload"]))
    assert [o.verdict for o in report.outcomes] == ["recovered"]


def test_cases_sample_is_dense_at_the_edges_and_bounded():
    full = cases(1000, masks=(0xFF,))
    assert len(full) == 2000
    some = cases(100_000, sample=400, masks=(0xFF,))
    flips = {c.position for c in some if c.kind == "flip"}
    assert set(range(64)) <= flips and set(range(100_000 - 64, 100_000)) <= flips
    assert len(flips) <= 400 and max(flips) == 99_999
    assert cases(100_000, sample=400, seed=1) != cases(100_000, sample=400, seed=2)


def test_kill_at_random_keeps_every_line_printed_after_the_ready_line():
    """What the child printed in the same write as its ready line is part of its output (a
    buffered read of the ready line once swallowed it, and the kill tests lost their states)."""
    code = ("import sys, time\n"
            "sys.stdout.write('ready\\n' + ''.join(f'{i}\\n' for i in range(5000))); sys.stdout.flush()\n"
            "time.sleep(60)\n")
    status, out = kill_at_random(code, delay=(0.2, 0.3), seed=1, ready="ready", timeout=60)
    assert status == -signal.SIGKILL
    assert out.splitlines() == ["ready", *map(str, range(5000))]
