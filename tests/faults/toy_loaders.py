"""Loaders for the harness's own test: each misbehaves in one way on one byte."""

from __future__ import annotations

import ctypes
import os

from vortex.errors import CorruptFileError


def load(directory: str) -> dict:
    path = os.path.join(directory, "data.bin")
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 8:
        raise CorruptFileError(path, f"truncated to {len(data)} bytes", remedy="restore it")
    if data[0] != 0x56:
        raise CorruptFileError(path, "bad magic", position=0)
    if data[1] != 0x01:
        ctypes.string_at(0)  # a segfault, as a broken native reader would
    if data[2] != 0x02:
        raise KeyError("version")  # an unrelated error
    return {"payload": list(data[3:7])}  # data[7:] is padding: harmless
