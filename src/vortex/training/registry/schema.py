"""The metadata of a model version (:class:`VersionMeta`) and the ``versions.arrow`` table.

:class:`VersionMeta` is the one definition of a version's metadata: the Arrow schema of the
table (:func:`arrow_schema`), the order of :data:`COLUMNS`, the checks of ``register``'s
metadata and the columns of ``vortex models list`` (:meth:`VersionMeta.columns`) all derive
from its fields.  Adding a column is adding one field here, with a default of None: tables
written before the column existed still load, the column reading as null (:func:`decode_table`
accepts any table whose columns are a subset of today's with the same types, as long as the
required ones are there).

The table is an Arrow IPC file ending with a sha256 seal (:func:`vortex._io.seal`), verified
before Arrow parses a byte of it: Arrow's reader trusts the offsets it reads, so one flipped bit
could crash the process.  A file written before the seal existed is validated fully instead.
"""

from __future__ import annotations

import json
import math
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ...errors import RegistryCorruptError
from ..._io import is_arrow_ipc_file, unseal
from ..statuses import VersionStatus

__all__ = ["VersionMeta", "Column", "COLUMNS", "META_NAME", "META_REMEDY", "arrow_schema",
           "checked_metadata", "check_rows", "decode_ipc", "decode_table", "encode_table",
           "encodable"]

#: File name of the metadata table inside a registry.
META_NAME = "versions.arrow"
META_REMEDY = "restore it from a backup (the registry cannot be opened until then)"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Column:
    """How ``vortex models list`` shows a field: its header and a format spec for numbers
    (``"time"``: an ISO 8601 UTC time)."""

    name: str
    header: str
    format: str = ""


def _shown(header: str, format: str = "", *, first: bool = False) -> dict[str, Any]:
    """Field metadata: shown by ``vortex models list`` (``first``: before the other columns)."""
    return {"column": (header, format), "first": first}


@dataclass(frozen=True, kw_only=True)
class VersionMeta:
    """Metadata of one stored model version: one row of ``versions.arrow``.

    Parameters
    ----------
    version
        Its number (set by the registry; never reused).
    parent
        The version its training started from.
    created_at
        Unix time of registration.
    trigger
        What started the training run ("manual", "scheduled", "rsi_triggered", ...).
    samples, epochs
        Size of the run's snapshot and epochs trained.
    train_loss, val_loss, val_accuracy
        Final training loss, held-out loss and accuracy (null for a non-finite value).
    improvement_pct, ci_low, ci_high
        Relative improvement over the model validated against, in percent, and its confidence
        interval.
    sha256
        Checksum of the weights file (set by the registry).
    status
        :attr:`VersionStatus.CANDIDATE` or :attr:`VersionStatus.REJECTED` as stored; listing
        derives ``active`` and ``retired`` from the serving log.
    """

    version: int = field(metadata=_shown("version", first=True))
    parent: int | None = field(default=None, metadata=_shown("parent"))
    created_at: float = field(metadata=_shown("created (UTC)", "time"))
    trigger: str | None = field(default=None, metadata=_shown("trigger"))
    samples: int | None = field(default=None, metadata=_shown("samples"))
    epochs: int | None = field(default=None, metadata=_shown("epochs"))
    train_loss: float | None = field(default=None, metadata=_shown("train_loss", ".4f"))
    val_loss: float | None = field(default=None, metadata=_shown("val_loss", ".4f"))
    val_accuracy: float | None = field(default=None, metadata=_shown("val_acc", ".4f"))
    improvement_pct: float | None = field(default=None, metadata=_shown("improv_%", "+.2f"))
    ci_low: float | None = field(default=None, metadata=_shown("CI_low_%", "+.1f"))
    ci_high: float | None = field(default=None, metadata=_shown("CI_high_%", "+.1f"))
    sha256: str
    status: VersionStatus = field(default=VersionStatus.CANDIDATE,
                                  metadata=_shown("status", first=True))

    @classmethod
    def columns(cls) -> tuple[Column, ...]:
        """The fields ``vortex models list`` shows, in order (those marked first, then the
        others, each in field order)."""
        shown = [f for f in fields(cls) if "column" in f.metadata]
        shown.sort(key=lambda f: not f.metadata["first"])  # stable: field order within each
        return tuple(Column(f.name, *f.metadata["column"]) for f in shown)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> VersionMeta:
        """The metadata of a row of the table (extra keys such as ``pinned`` are ignored)."""
        values = {name: row[name] for name in COLUMNS if name in row}
        values["status"] = VersionStatus(values.get("status") or VersionStatus.CANDIDATE)
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """The row as the table stores it (status as its string value)."""
        return {name: getattr(self, name) for name in COLUMNS} | {"status": str(self.status)}


def _arrow_kind(annotation: Any) -> type:
    """``int``, ``float`` or ``str`` from a field's type (``X | None`` and str enums allowed)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    (kind,) = args
    return str if issubclass(kind, str) else kind


_HINTS = typing.get_type_hints(VersionMeta)
#: Names of the metadata columns, in table order.
COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(VersionMeta))
_KINDS: dict[str, type] = {name: _arrow_kind(_HINTS[name]) for name in COLUMNS}
#: Columns every row must hold (fields without a default, and the status).
_REQUIRED = frozenset(f.name for f in fields(VersionMeta)
                      if f.default is f.default_factory) | {"status"}  # both MISSING
_SET_BY_REGISTRY = ("version", "sha256")


def arrow_schema():
    """The Arrow schema of ``versions.arrow``, derived from :class:`VersionMeta`."""
    import pyarrow as pa

    types = {int: pa.int64(), float: pa.float64(), str: pa.string()}
    return pa.schema([(name, types[_KINDS[name]]) for name in COLUMNS])


def encodable(text: str) -> bool:
    """Whether ``text`` can be stored as UTF-8 (lone surrogates cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``register``'s metadata with each value checked against its field's type.

    Checked before anything is written (ValueError naming the field and the value; a refusal
    leaves no file). A non-finite metric is stored as null; the status defaults to
    "candidate".
    """
    from ..._scalars import as_index, as_real

    if metadata is not None and not isinstance(metadata, Mapping):
        raise ValueError(f"metadata={metadata!r}: must be a mapping of column names to values")
    meta = dict(metadata or {})
    unknown = [k for k in meta if k not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown metadata columns {sorted(map(str, unknown))}; known: {COLUMNS}")
    for key, value in meta.items():
        name = f"metadata[{key!r}]"
        if key in _SET_BY_REGISTRY:
            raise ValueError(f"{name} is set by the registry, got {value!r}")
        if value is None:
            continue
        kind = _KINDS[key]
        if kind is int:
            meta[key] = as_index(value, name, 0)
        elif kind is str:
            if not isinstance(value, str) or not encodable(value):
                raise ValueError(f"{name}={value!r}: must be a (UTF-8 encodable) string")
        else:  # a non-finite metric is stored as null, a time must be finite
            real = as_real(value, name)
            if key == "created_at" and not math.isfinite(real):
                raise ValueError(f"{name}={value!r}: must be a finite unix time")
            meta[key] = real if math.isfinite(real) else None
    status = meta.get("status") or VersionStatus.CANDIDATE
    if status not in VersionStatus.stored():
        raise ValueError(f"metadata['status']={status!r}: must be 'candidate' or 'rejected' "
                         f"('active' and 'retired' follow from the serving log: use set_active)")
    meta["status"] = str(VersionStatus(status))
    return meta


def encode_table(rows: list[dict[str, Any]], next_version: int, pinned: list[int]) -> tuple[Any, Any]:
    """The table of ``rows`` and its Arrow IPC file (a buffer, to be written sealed)."""
    import pyarrow as pa

    schema = arrow_schema().with_metadata({"next_version": str(next_version),
                                           "pinned": json.dumps(pinned)})
    table = pa.Table.from_pylist(rows, schema=schema)
    # Serialised in memory so the file is written by one call, without a copy of the buffer.
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return table, sink.getvalue()


def decode_table(data: bytes | None, path: str):
    """The table in the bytes of ``versions.arrow`` (None: no file yet, an empty table).

    The seal is verified (or, unsealed, the whole table validated) before Arrow parses it;
    a table from before a column existed gets that column as nulls.

    Raises
    ------
    RegistryCorruptError
        The file is damaged, or holds columns or rows no registry writes.
    """
    schema = arrow_schema()
    if data is None:
        return schema.empty_table()
    table = decode_ipc(data, path)
    if not table.schema.equals(schema):
        table = _upgraded(table, schema, path)
    return table


def decode_ipc(data: bytes, path: str):
    """The table in the bytes of a sealed (or pre-seal, fully validated) Arrow IPC file."""
    import pyarrow as pa

    body, _ = unseal(data, path, RegistryCorruptError, unsealed=is_arrow_ipc_file,
                     remedy=META_REMEDY)
    try:
        table = pa.ipc.open_file(pa.py_buffer(body)).read_all()
        table.validate(full=True)
    except Exception as exc:  # any failure to parse is damage: Arrow raises many kinds
        raise RegistryCorruptError(path, f"not a readable Arrow IPC file ({type(exc).__name__}: "
                                   f"{exc})", remedy=META_REMEDY) from exc
    return table


def _upgraded(table, schema, path: str):
    """``table`` (written before some of today's columns existed) with those columns null."""
    import pyarrow as pa

    names = table.schema.names
    foreign = [f"{f.name}: {f.type}" for f in table.schema
               if f.name not in schema.names or schema.field(f.name).type != f.type]
    missing = sorted(_REQUIRED - set(names))
    if foreign or missing or len(set(names)) != len(names):
        raise RegistryCorruptError(path, f"has schema {table.schema}, expected {schema} "
                                   f"(or a subset of it holding {sorted(_REQUIRED)})",
                                   remedy=META_REMEDY)
    columns = [table.column(f.name) if f.name in names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(table.schema.metadata))


def check_rows(path: str, rows: list[dict[str, Any]], pinned: Any) -> None:
    """Reject a metadata table no registry writes (defence for files without a seal)."""
    previous = 0
    for i, row in enumerate(rows):
        bad = None
        if row["version"] is None or row["version"] <= previous:
            bad = f"version {row['version']} does not follow {previous}"
        elif not isinstance(row["sha256"], str) or not _SHA256_RE.match(row["sha256"]):
            bad = f"sha256 {row['sha256']!r} is not a sha256"
        elif row["status"] not in VersionStatus.stored():
            bad = f"status {row['status']!r}"
        elif row["created_at"] is None or not math.isfinite(row["created_at"]):
            bad = f"created_at {row['created_at']!r}"
        if bad:
            raise RegistryCorruptError(path, f"row {i} holds what no registry writes: {bad}",
                                       remedy=META_REMEDY)
        previous = row["version"]
    if not (isinstance(pinned, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                             for v in pinned)):
        raise RegistryCorruptError(path, f"pinned versions {pinned!r} are not a list of numbers",
                                   remedy=META_REMEDY)
