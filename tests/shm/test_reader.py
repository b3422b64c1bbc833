"""SegmentReader: cursors, overruns, and every state a writer can die in (made by hand)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import naive
import shm_support as s
from shm_support import (BEGUN, CLOSED, CLOSED_MARK, COUNT, SAMPLES, metric_slot_at, sample_ring_at,
                         sample_slot_size, u64, uncount)
from vortex.errors import CorruptFileError, SegmentCorruptError
from vortex.shm import SegmentReader, WorkerSegment


def _segment(home, n, *, window=16, ring=8, close=True, dim=s.DIM):
    seg = WorkerSegment.create(home, dim, window=window, ring_capacity=ring)
    for i in range(n):
        s.write(seg, i)
    if close:
        seg.close()
    return seg


def _expected_totals(n):
    lat, conf = s.latency_seconds(n), s.confidences(n)
    return naive.log_histogram(lat), naive.log_histogram(conf), s.sequential_sum(lat)


def test_reads_everything_new_since_the_cursor_once(home):
    seg = _segment(home, 5, close=False)
    reader = SegmentReader(seg.path)
    first = reader.read_metrics()
    assert first.index.tolist() == [0, 1, 2, 3, 4] and first.lost == 0
    s.check_metrics(first)
    assert len(reader.read_metrics()) == 0
    for i in range(5, 9):
        s.write(seg, i)
    assert reader.read_metrics(max_records=3).index.tolist() == [5, 6, 7]
    assert reader.read_metrics().index.tolist() == [8]
    rows = reader.read_samples()
    assert rows.seq.tolist() == [1, 2, 3, 4, 5, 6, 7, 8] and rows.lost == 1  # ring of 8
    s.check_samples(rows)
    assert reader.alive()
    seg.close()
    assert not reader.alive() and reader.at_end()
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read_metrics()


def test_an_overrun_is_counted_and_the_rest_is_read_exactly(home):
    seg = _segment(home, 100, window=16, ring=8, close=False)
    reader = SegmentReader(seg.path)
    got = reader.read_metrics()
    assert got.index.tolist() == list(range(84, 100)) and got.lost == 84
    s.check_metrics(got)
    rows = reader.read_samples()
    assert rows.seq.tolist() == list(range(92, 100)) and rows.lost == 92
    for i in range(100, 105):
        s.write(seg, i)
    assert reader.read_metrics().index.tolist() == list(range(100, 105))
    assert reader.lost_records == 84 and reader.lost_samples == 92
    seg.close()
    reader.close()


def test_totals_count_every_record_even_those_the_ring_dropped(home):
    seg = _segment(home, 300, window=16, close=False)
    lat_counts, conf_counts, lat_sum = _expected_totals(300)
    with SegmentReader(seg.path) as reader:
        live = reader.totals()
        assert live.records == 300 and live.samples == 300
        np.testing.assert_array_equal(live.latency.counts, lat_counts)
        np.testing.assert_array_equal(live.confidence.counts, conf_counts)
        assert live.latency.total == lat_sum  # bit for bit: the same additions in the same order
        errors = [e for e in (s.metric_values(i)[2] for i in range(300)) if not math.isnan(e)]
        assert live.error_count == len(errors) and live.error_sum == s.sequential_sum(errors)
        seg.close()
        assert not reader.alive()
        final = reader.totals()
        assert final.records == 300
        assert final.latency == live.latency and final.confidence == live.confidence


def test_cursor_options_are_checked(home):
    seg = _segment(home, 3)
    with pytest.raises(ValueError, match="metric_cursor=-1"):
        SegmentReader(seg.path, metric_cursor=-1)
    with SegmentReader(seg.path, metric_cursor=2, sample_cursor=1) as reader:
        assert reader.read_metrics().index.tolist() == [2]
        assert reader.read_samples().seq.tolist() == [1, 2]
        with pytest.raises(ValueError, match="max_records"):
            reader.read_metrics(max_records=-1)
    with SegmentReader(seg.path, metric_cursor=10) as reader:
        with pytest.raises(ValueError, match="cursor 10 is beyond the writer's count 3"):
            reader.read_metrics()


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        SegmentReader(tmp_path / "nope.seg")
    (tmp_path / "short.seg").write_bytes(b"VTXSHMSG")
    with pytest.raises(SegmentCorruptError, match="short.seg: truncated to 8 bytes"):
        SegmentReader(tmp_path / "short.seg")
    (tmp_path / "other.seg").write_bytes(b"\0" * 4096)
    with pytest.raises(CorruptFileError, match="other.seg: not a Vortex shared-memory segment"):
        SegmentReader(tmp_path / "other.seg")
    with pytest.raises(SegmentCorruptError, match="not a regular file"):
        SegmentReader(tmp_path)


# -- the states a killed writer leaves (csrc/shm_writer.hpp, steps 1-6) ----------------------

N = 21  # records and samples written before the "kill"; the rings (16 and 8) have wrapped


def _killed(home, edit):
    """A closed segment of N records turned into what a writer killed at some step leaves."""
    seg = _segment(home, N)
    u64(seg.path, CLOSED, 0)  # a killed writer never marks it closed
    edit(seg.path)
    return seg.path


def _check_final(path, records, samples):
    with SegmentReader(path) as reader:
        assert not reader.alive()
        got = reader.read_metrics()
        assert got.index.tolist() == list(range(records - 16, records))
        s.check_metrics(got)
        rows = reader.read_samples()
        assert rows.seq.tolist() == list(range(samples - 8, samples))
        s.check_samples(rows)
        totals = reader.totals()
        lat, conf, lat_sum = _expected_totals(records)
        assert totals.records == records and totals.samples == samples
        np.testing.assert_array_equal(totals.latency.counts, lat)
        np.testing.assert_array_equal(totals.confidence.counts, conf)
        assert totals.latency.total == lat_sum
        assert reader.at_end()


def test_killed_after_beginning_a_record_before_touching_its_slot(home):
    path = _killed(home, lambda p: u64(p, BEGUN, N + 1))
    _check_final(path, N, N)


def test_killed_while_writing_a_slot_reads_up_to_the_record_before(home):
    def torn(p):
        u64(p, BEGUN, N + 1)
        at = metric_slot_at(N, 16)
        u64(p, at, 2 * N + 1)  # odd: record N half written over record N - 16
        with open(p, "r+b") as fh:
            fh.seek(at + 16)
            fh.write(os.urandom(32))
    path = _killed(home, torn)
    with SegmentReader(path) as reader:
        got = reader.read_metrics()
        assert got.index.tolist() == list(range(N - 15, N)) and got.lost == N - 15  # N-16 is gone
        s.check_metrics(got)
        assert reader.totals().records == N


@pytest.mark.parametrize("missing", [(0, 1), (1,), ()], ids=["both", "confidence", "none"])
def test_killed_between_completing_and_publishing_a_record_counts_it_once(home, missing):
    """The slot of record N-1 is complete but the count says N-1: the reader takes the record,
    and adds it to each histogram that did not count it yet."""
    def unpublished(p):
        u64(p, COUNT, N - 1)  # begun stays N: the record was in flight
        lat, conf, _ = s.metric_values(N - 1)
        for h in missing:
            uncount(p, h, [lat / 1000.0, conf][h])
    _check_final(_killed(home, unpublished), N, N)


def test_killed_while_pushing_a_sample(home):
    def torn(p):
        at = sample_ring_at(16) + (N % 8) * sample_slot_size(s.DIM)
        u64(p, at, 2 * N + 1)
    path = _killed(home, torn)
    with SegmentReader(path) as reader:
        rows = reader.read_samples()
        assert rows.seq.tolist() == list(range(N - 7, N)) and rows.lost == N - 7
        s.check_samples(rows)
        assert reader.totals().samples == N


def test_killed_between_pushing_and_publishing_a_sample(home):
    _check_final(_killed(home, lambda p: u64(p, SAMPLES, N - 1)), N, N)


@pytest.mark.parametrize("edit, problem", [
    (lambda p: u64(p, BEGUN, N + 2), "differ by more than the record in flight"),
    (lambda p: (u64(p, CLOSED, CLOSED_MARK), u64(p, BEGUN, N + 1)), "closed segment has a record in flight"),
    (lambda p: u64(p, CLOSED, 1), "closed mark"),
    (lambda p: uncount(p, 0, s.metric_values(3)[0] / 1000.0), "histogram counts 20 records, the ring holds 21"),
    (lambda p: u64(p, COUNT, N - 2), "differ by more"),
    (lambda p: u64(p, SAMPLES, N + 1), "slot"),
    (lambda p: u64(p, metric_slot_at(7, 16) + 8, 12345), "record 7 fails its checksum"),
], ids=["begun+2", "closed-in-flight", "closed-mark", "histogram", "count-2", "samples+1", "checksum"])
def test_states_no_writer_can_leave_are_corruption(home, edit, problem):
    path = _killed(home, edit)
    with pytest.raises(SegmentCorruptError, match=problem) as err:
        SegmentReader(path)
    assert str(path) in str(err.value)
