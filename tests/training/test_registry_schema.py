"""VersionMeta: the Arrow schema, the CLI columns and the statuses derive from it; files written
before it existed (by hand here, byte for byte as the earlier code wrote them) still load."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pyarrow as pa
import pytest
from safetensors.numpy import save

from vortex.errors import RegistryCorruptError
from vortex.training.registry import COLUMNS, ModelRegistry, VersionMeta, VersionStatus
from vortex.training.registry.schema import arrow_schema
from vortex.training.statuses import RunStatus

# The schema of versions.arrow as the code before VersionMeta spelled it out, field by field.
_SCHEMA_BEFORE = pa.schema([
    ("version", pa.int64()), ("parent", pa.int64()), ("created_at", pa.float64()),
    ("trigger", pa.string()), ("samples", pa.int64()), ("epochs", pa.int64()),
    ("train_loss", pa.float64()), ("val_loss", pa.float64()),
    ("val_accuracy", pa.float64()), ("improvement_pct", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    ("sha256", pa.string()), ("status", pa.string()),
])


def _weights(value: float) -> bytes:
    return save({"w": np.full(3, value, np.float32)})


def _write_old_registry(root, schema: pa.Schema, *, sealed: bool) -> list[bytes]:
    """A registry of two versions written with pyarrow as the earlier code did: rows, schema
    metadata (next_version, pinned), an IPC file and (``sealed``) the sha256 trailer."""
    root.mkdir()
    blobs = [_weights(1.0), _weights(2.0)]
    rows = []
    for v, blob in enumerate(blobs, 1):
        (root / f"v{v:06d}.safetensors").write_bytes(blob)
        row = {"version": v, "parent": v - 1 or None, "created_at": 1000.0 + v, "trigger": "manual",
               "samples": 100 * v, "epochs": 3, "train_loss": 0.5, "val_loss": 0.4,
               "val_accuracy": 0.8, "improvement_pct": 2.5, "ci_low": 0.5, "ci_high": 4.0,
               "sha256": hashlib.sha256(blob).hexdigest(), "status": "candidate"}
        rows.append({k: row[k] for k in schema.names})
    table = pa.Table.from_pylist(rows, schema=schema.with_metadata(
        {"next_version": "3", "pinned": json.dumps([1])}))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    if sealed:
        body += b"\n#vortex-sha256:" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    (root / "versions.arrow").write_bytes(body)
    return blobs


def test_the_arrow_schema_derives_from_version_meta_and_is_unchanged():
    assert COLUMNS == tuple(f.name for f in dataclasses.fields(VersionMeta))
    assert arrow_schema().equals(_SCHEMA_BEFORE, check_metadata=True)


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "before-seals"])
def test_a_registry_written_before_version_meta_still_loads(tmp_path, sealed):
    root = tmp_path / "models"
    blobs = _write_old_registry(root, _SCHEMA_BEFORE, sealed=sealed)
    reg = ModelRegistry(root)
    rows = reg.list_versions()
    assert [r["version"] for r in rows] == [1, 2] and reg.pinned() == [1]
    assert rows[1]["ci_high"] == 4.0 and rows[1]["status"] is VersionStatus.CANDIDATE
    assert reg.load_bytes(2) == blobs[1]
    reg.set_active(2)
    assert reg.register(_weights(3.0), {"status": VersionStatus.REJECTED}) == 3
    assert [r["status"] for r in reg.list_versions()] == ["candidate", "active", "rejected"]
    meta = VersionMeta.from_row(reg.get(3))
    assert meta.status is VersionStatus.REJECTED and meta.to_row()["status"] == "rejected"


def test_a_table_from_before_a_column_existed_reads_it_as_null(tmp_path):
    # the table as written before the improvement interval was recorded
    older = pa.schema([f for f in _SCHEMA_BEFORE if f.name not in ("ci_low", "ci_high")])
    root = tmp_path / "models"
    _write_old_registry(root, older, sealed=True)
    reg = ModelRegistry(root)
    assert [(r["improvement_pct"], r["ci_low"], r["ci_high"]) for r in reg.list_versions()] == \
        [(2.5, None, None)] * 2
    v = reg.register(_weights(3.0), {"ci_low": 1.0, "ci_high": 2.0})  # rewritten whole
    assert reg.get(v)["ci_low"] == 1.0 and ModelRegistry(root).get(1)["ci_low"] is None


@pytest.mark.parametrize("change", [
    pytest.param(lambda s: s.append(pa.field("owner", pa.string())), id="unknown-column"),
    pytest.param(lambda s: s.set(s.get_field_index("samples"), pa.field("samples", pa.string())),
                 id="wrong-type"),
    pytest.param(lambda s: s.remove(s.get_field_index("sha256")), id="required-column-missing"),
])
def test_a_table_no_registry_wrote_is_refused(tmp_path, change):
    schema = change(_SCHEMA_BEFORE)
    root = tmp_path / "models"
    root.mkdir()
    row = {"version": 1, "created_at": 1.0, "sha256": "0" * 64, "status": "candidate",
           "samples": "100" if schema.field("samples").type == pa.string() else 100}
    table = pa.Table.from_pylist([{k: row.get(k) for k in schema.names}], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    (root / "versions.arrow").write_bytes(sink.getvalue().to_pybytes())
    with pytest.raises(RegistryCorruptError, match="has schema"):
        ModelRegistry(root)


def test_cli_columns_derive_from_version_meta():
    headers = [c.header for c in VersionMeta.columns()]
    assert headers[:2] == ["version", "status"]  # the leading ones, then field order
    shown = {c.name for c in VersionMeta.columns()}
    assert shown == set(COLUMNS) - {"sha256"}


def test_statuses_are_str_enums_that_read_and_write_as_their_values():
    assert VersionStatus("active") is VersionStatus.ACTIVE and f"{VersionStatus.RETIRED}" == "retired"
    assert json.dumps({"s": RunStatus.NOT_KEPT}) == '{"s": "not_kept"}'
    assert RunStatus.SWAPPED == "swapped" and set(VersionStatus.stored()) == {"candidate", "rejected"}
