"""What the control plane remembers between runs about a home's segments (``fleet-state.json``).

Three things, written together in one sealed atomic write (``vortex._io``) by
:meth:`vortex.shm.FleetReader.commit`:

* the cursors of every segment (what was read and handed to the caller), so a control plane
  that takes over resumes where the previous one committed (records read but not committed are
  read again: delivery is at least once);
* the totals of the workers already folded (dead, read to the end, removed), so that merged
  counters never go down when a worker's segment disappears;
* the segments folded, until their files are gone: a crash between this write and the removal
  of a file must not fold it twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .._io import atomic_write_sealed_json, read_sealed_json
from ..errors import CorruptFileError
from .records import SegmentTotals

__all__ = ["FleetState"]

_VERSION = 1
_REMEDY = ("delete it to start over (cursors restart at the oldest records the segments hold; "
           "the counts of workers already folded are lost)")


@dataclass
class FleetState:
    """Cursors per segment, the folded workers' totals, and the segments folded.

    Attributes
    ----------
    cursors
        Segment file name -> ``(segment_id, metric_cursor, sample_cursor)``.
    retired
        Sum of the totals of every folded segment.
    retired_workers
        How many segments were folded.
    folded
        Segment file name -> segment_id, for segments folded whose file may still exist.
    """

    cursors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    retired: SegmentTotals = field(default_factory=SegmentTotals.empty)
    retired_workers: int = 0
    folded: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FleetState:
        """The state at ``path``; an empty state if there is none.

        Raises
        ------
        vortex.errors.CorruptFileError
            The file fails its seal or does not hold a state, naming it.
        """
        try:
            obj = read_sealed_json(path, CorruptFileError, remedy=_REMEDY)
        except FileNotFoundError:
            return cls()
        try:
            if obj["version"] != _VERSION:
                raise ValueError(f"version {obj['version']!r}")
            cursors = {str(name): _cursor(c) for name, c in obj["cursors"].items()}
            folded = {str(name): _ints([i], 1)[0] for name, i in obj["folded"].items()}
            return cls(cursors, SegmentTotals.from_json(obj["retired"]),
                       _ints([obj["retired_workers"]], 1)[0], folded)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptFileError(path, f"does not hold a fleet state ({exc!r})", remedy=_REMEDY) from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state atomically (sealed JSON)."""
        atomic_write_sealed_json(path, {
            "version": _VERSION,
            "cursors": {name: list(c) for name, c in sorted(self.cursors.items())},
            "retired": self.retired.to_json(),
            "retired_workers": self.retired_workers,
            "folded": dict(sorted(self.folded.items())),
        })


def _cursor(values: Any) -> tuple[int, int, int]:
    a, b, c = _ints(values, 3)
    return a, b, c


def _ints(values: Any, n: int) -> tuple[int, ...]:
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"{values!r} is not a list of {n} integers")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(f"{values!r} are not non-negative integers")
    return tuple(values)
