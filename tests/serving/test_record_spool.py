"""RecordSpool, the bounded ring of request records a replica spools: against a plain list as
the reference, and its file on disk."""

from __future__ import annotations

import numpy as np
import pytest

from vortex.errors import CorruptFileError
from vortex.serving.record_spool import RecordSpool


def _columns(ids):
    ids = np.asarray(ids)
    return {"timestamp": 1000.0 + ids, "latency_ms": 2.0 * ids, "confidence": ids / 100,
            "error": np.where(ids % 2, 0.5, np.nan), "version": ids % 3 - 1}


def test_the_ring_keeps_the_newest_rows_numbered_once_as_a_list_would():
    rng = np.random.default_rng(7)
    spool, reference, next_id = RecordSpool(37), [], 0
    for _ in range(300):
        if rng.random() < 0.7:
            n = int(rng.integers(0, 60))
            spool.extend(**_columns(np.arange(next_id, next_id + n)))
            reference = (reference + list(range(next_id, next_id + n)))[-37:]
            next_id += n
        else:  # the merger's watermark somewhere around the oldest rows
            mark = next_id - int(rng.integers(0, 50))
            assert spool.drop_older_than(mark) == sum(1 for i in reference if i < mark)
            reference = [i for i in reference if i >= mark]
        rows = spool.snapshot()
        assert rows.seq.tolist() == reference and rows.latency_ms.tolist() == [2.0 * i for i in reference]
        assert spool.next_seq == next_id and len(spool) == len(reference)


def test_a_saved_spool_loads_whole_or_newest_first_and_a_flipped_byte_is_named(tmp_path):
    spool = RecordSpool(20)
    spool.extend(**_columns(range(30)))
    path = tmp_path / "b.arrow"
    assert spool.save(path, metadata={"who": "b"}) == 30
    again = RecordSpool.load(path)
    assert again.capacity == 20 and again.next_seq == 30 and again.saved_metadata["who"] == "b"
    for name in spool.snapshot().dtype.names:
        assert np.array_equal(again.snapshot()[name], spool.snapshot()[name], equal_nan=name == "error")
    assert RecordSpool.load(path, 5).snapshot().seq.tolist() == list(range(25, 30))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="b.arrow"):
        RecordSpool.load(path)


@pytest.mark.parametrize("columns", [{"latency_ms": np.zeros(2)}, {**_columns(range(3)), "version": np.zeros(2)}])
def test_bad_columns_are_refused_naming_them(columns):
    with pytest.raises(ValueError, match="column"):
        RecordSpool(4).extend(**columns)
