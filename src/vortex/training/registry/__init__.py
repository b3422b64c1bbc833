"""Versioned model store: safetensors weights, an Arrow metadata table and a serving log.

One job per module:

* :mod:`.model_registry` — :class:`ModelRegistry` (reads, writes, swaps, cleanup) and
  :func:`verify_registry`;
* :mod:`.schema` — :class:`VersionMeta`, from which the table's Arrow schema, :data:`COLUMNS`
  and the CLI's columns derive, and the sealed ``versions.arrow`` format;
* :mod:`.serving_log` — the checksummed, append-only ``serving_log.jsonl`` format;
* :mod:`.store`, :mod:`.local_store`, :mod:`.fsspec_store` — where the files live (a
  directory, or any fsspec URL such as ``s3://bucket/home/models``).
"""

from __future__ import annotations

from ..statuses import VersionStatus
from .model_registry import ModelRegistry, state_dict_bytes, verify_registry
from .schema import COLUMNS, VersionMeta
from .serving_log import LOG_COLUMNS

__all__ = ["ModelRegistry", "VersionMeta", "VersionStatus", "COLUMNS", "LOG_COLUMNS",
           "state_dict_bytes", "verify_registry"]
