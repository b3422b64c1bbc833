"""The checklist a demo ends with: each stage of the loop, whether it happened, its figure.

A stage is *reached* (with the figure that shows it), *not reached* (with the reason: it did
not happen, e.g. no candidate beat the active model) or *errored* (it could not happen
because of the environment, e.g. the judge could not start or nothing could be isolated; the
cause says what to fix). A demo promises the whole loop, so it succeeds only when every
stage is reached::

    checklist = Checklist("vortex demo")
    checklist.reached("weakness detected", "error rate 0.68 > 0.35", type="prediction_error_spike")
    checklist.errored("proposal tested in isolation", "No module named 'pytest'")
    print(checklist.render()); sys.exit(checklist.exit_status)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Checklist", "Stage", "StageStatus"]


class StageStatus(str, enum.Enum):
    """What became of a stage."""

    REACHED = "reached"
    NOT_REACHED = "not_reached"
    ERRORED = "errored"


_MARKS = {StageStatus.REACHED: "[x]", StageStatus.NOT_REACHED: "[ ]", StageStatus.ERRORED: "[!]"}


@dataclass(frozen=True)
class Stage:
    """One stage: its ``name``, ``status``, the measured ``figure`` (reached) or the ``reason``
    (not reached, errored), and the figures as data (``facts``).
    """

    name: str
    status: StageStatus
    text: str
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stage as JSON-ready data (``report.json``)."""
        return {"name": self.name, "status": self.status.value, "text": self.text,
                "facts": self.facts}


class Checklist:
    """The stages of one demo run, in the order they were added."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.stages: list[Stage] = []

    def reached(self, name: str, figure: str, **facts: Any) -> None:
        """``name`` happened; ``figure`` is what measured it."""
        self.stages.append(Stage(name, StageStatus.REACHED, figure, facts))

    def not_reached(self, name: str, reason: str, **facts: Any) -> None:
        """``name`` did not happen, for ``reason``."""
        self.stages.append(Stage(name, StageStatus.NOT_REACHED, reason, facts))

    def errored(self, name: str, cause: str, **facts: Any) -> None:
        """``name`` could not happen in this environment, because of ``cause``."""
        self.stages.append(Stage(name, StageStatus.ERRORED, cause, facts))

    @property
    def complete(self) -> bool:
        """Whether every stage was reached."""
        return bool(self.stages) and all(s.status is StageStatus.REACHED for s in self.stages)

    @property
    def exit_status(self) -> int:
        """0 when every stage was reached, else 1."""
        return 0 if self.complete else 1

    def render(self) -> str:
        """The checklist as text, one line per stage (``[x]`` reached, ``[ ]`` not reached,
        ``[!]`` errored), then the verdict.
        """
        width = max((len(s.name) for s in self.stages), default=0)
        lines = [f"{self.title}, stage by stage:"]
        for s in self.stages:
            label = {StageStatus.REACHED: "", StageStatus.NOT_REACHED: "NOT REACHED: ",
                     StageStatus.ERRORED: "ERRORED: "}[s.status]
            lines.append(f"  {_MARKS[s.status]} {s.name:<{width}}  {label}{s.text}")
        missed = [s.name for s in self.stages if s.status is not StageStatus.REACHED]
        lines.append("every stage reached" if not missed else
                     f"{len(missed)} of {len(self.stages)} stages not reached: " + ", ".join(missed))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The checklist as JSON-ready data (``report.json``)."""
        return {"title": self.title, "complete": self.complete,
                "stages": [s.to_dict() for s in self.stages]}
