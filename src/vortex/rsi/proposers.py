"""Proposers: turn a weakness into a concrete diff against the target tree.

Built in, one per proposal type, each working on the tunables declared in ``[tool.vortex]``:

* :class:`PerformanceProposer`: latency spikes, throughput drops;
* :class:`ConfidenceProposer`: low / dropping confidence; fits the softmax temperature on buffered
  logits and labels (NLL minimised by golden-section search over log T, NumPy only) when they are
  available, otherwise moves a confidence tunable one step;
* :class:`ErrorHandlingProposer`: prediction-error spikes;
* :class:`MemoryProposer`: memory pressure;
* :class:`CommandProposer`: runs a configured program (an LLM coding tool, say) with the weakness
  report as JSON on stdin and takes the unified diff it prints.

A tunable move is one step in the direction the tunable declares for the weakness
(``addresses = {latency_spike = "decrease"}``): ``value * step`` or ``value / step`` on a log
scale, ``value ± step`` on a linear one, the declared value for a flag, the next choice for a
choice. Moves stay inside the bounds. Proposers learn from outcomes through
:class:`OutcomeMemory`: a move that was rejected or rolled back for a weakness kind is not
proposed again in the same direction for that kind. Every draft holds a non-empty diff made
with :func:`difflib.unified_diff` against the real file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._io import MISSING, FileKey, FileLock, atomic_write_sealed_json, file_key, read_sealed
from ..errors import CorruptFileError, PatchError, RSIError
from ..monitor.rules import kinds_for
from ..monitor.weaknesses import Weakness, WeaknessType
from ..tunables import replace_value
from .diffs import make_diff, parse_diff
from .proposal import TunableMove
from .settings import TunableSpec, VortexSettings

__all__ = [
    "CommandProposer",
    "ConfidenceProposer",
    "ErrorHandlingProposer",
    "MemoryProposer",
    "OutcomeMemory",
    "PerformanceProposer",
    "ProposalDraft",
    "Proposer",
    "ProposerContext",
    "TunableProposer",
    "default_proposers",
    "fit_temperature",
]

CalibrationData = Callable[[], "tuple[Any, Any]"]


@dataclass
class ProposalDraft:
    """What a proposer returns; the engine turns it into an :class:`ImprovementProposal`."""

    proposer: str
    description: str
    diff: str
    expected_improvement: dict[str, Any] = field(default_factory=dict)
    moves: list[TunableMove] = field(default_factory=list)


def _is_json_list(data: bytes) -> bool:
    """An unsealed memory file of an earlier version: a JSON list."""
    try:
        return isinstance(json.loads(data), list)
    except ValueError:
        return False


class OutcomeMemory:
    """Directions that failed, per weakness kind and tunable; persisted at ``path`` (sealed
    JSON; an unsealed list written by earlier versions is read too).

    Shared by every process on the home: :meth:`block` re-reads the file and adds to it under
    ``<path>.lock``, and reads notice a file another process changed.
    """

    _REMEDY = "delete it: the directions it blocked are then proposed again"

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file_lock = FileLock(path + ".lock")
        self._blocked: set[tuple[str, str, str]] = set()
        self._key: FileKey | None = None
        self._refresh()

    def _read(self) -> set[tuple[str, str, str]]:
        body, _ = read_sealed(self.path, CorruptFileError, unsealed=_is_json_list, remedy=self._REMEDY)
        try:
            items = json.loads(bytes(body))
        except ValueError:
            items = None
        if not isinstance(items, list) or not all(
                isinstance(b, list) and len(b) == 3 and all(isinstance(v, str) for v in b) for b in items):
            raise CorruptFileError(self.path, "is not a list of [weakness, tunable, direction]",
                                   remedy=self._REMEDY)
        return {(a, b, c) for a, b, c in items}

    def _refresh(self) -> set[tuple[str, str, str]]:
        with self._lock:
            key = file_key(self.path)
            if key != self._key:
                self._blocked, self._key = (set() if key == MISSING else self._read()), key
            return self._blocked

    def block(self, weakness_type: str, move: TunableMove) -> None:
        """Remember that ``move``'s direction failed against ``weakness_type``: no proposer
        moves that tunable that way for that kind again.

        The file is re-read and rewritten under ``<path>.lock``, so directions another process
        blocked meanwhile are kept.

        Raises
        ------
        vortex.errors.CorruptFileError
            The memory file is damaged; nothing is written (a rewrite would forget what it
            blocked).
        """
        with self._file_lock:
            blocked = self._refresh() | {(weakness_type, move.name, move.direction)}
            atomic_write_sealed_json(self.path, sorted(blocked))
            with self._lock:
                self._blocked, self._key = blocked, file_key(self.path)

    def is_blocked(self, weakness_type: str, name: str, direction: str) -> bool:
        """Whether moving tunable ``name`` in ``direction`` is blocked for ``weakness_type``
        (the file is re-read when another process changed it).

        Raises
        ------
        vortex.errors.CorruptFileError
            The memory file is damaged.
        """
        return (weakness_type, name, direction) in self._refresh()

    def blocked(self) -> list[tuple[str, str, str]]:
        """Every blocked ``(weakness kind, tunable, direction)``, sorted (re-read as
        :meth:`is_blocked` is); :class:`~vortex.errors.CorruptFileError` when damaged.
        """
        return sorted(self._refresh())


@dataclass
class ProposerContext:
    """What proposers may read: settings, outcome memory, buffered calibration data."""

    settings: VortexSettings
    memory: OutcomeMemory
    calibration_data: CalibrationData | None = None


class Proposer(Protocol):
    """What the engine asks for a change: each proposer that :meth:`handles` a weakness is
    asked in turn to :meth:`propose` one, until one returns a draft.

    ``name`` identifies the proposer in proposals, the audit log and error messages.
    """

    name: str

    def handles(self, weakness: Weakness) -> bool:
        """Whether this proposer addresses ``weakness``'s kind at all (the engine skips it
        otherwise).
        """
        ...

    def propose(self, weakness: Weakness, ctx: ProposerContext) -> ProposalDraft | None:
        """A change addressing ``weakness``, or None when this proposer has none to offer.

        Parameters
        ----------
        weakness
            The weakness to address.
        ctx
            What the proposer may read: the target's settings, the outcome memory (directions
            that failed before), buffered calibration data.

        Returns
        -------
        ProposalDraft or None
            A draft whose diff is non-empty and parses; the sandbox, not the proposer, decides
            whether it applies to the tree and helps.

        Raises
        ------
        RSIError, OSError, ValueError
            The proposer could not work (its program failed, a file could not be read); the
            engine records the error and asks the next proposer.
        """
        ...


def _read_values(settings: VortexSettings, spec: TunableSpec) -> tuple[str, dict[str, Any]]:
    path = os.path.join(settings.root, spec.file)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return text, tomllib.loads(text)


def current_values(settings: VortexSettings) -> dict[str, Any]:
    """Current value of every declared tunable (None if its file does not set it)."""
    out = {}
    for spec in settings.tunables:
        try:
            out[spec.name] = _read_values(settings, spec)[1].get(spec.name)
        except (OSError, tomllib.TOMLDecodeError):
            out[spec.name] = None
    return out


def _step(spec: TunableSpec, value: Any, direction: str) -> Any:
    """One step of ``spec`` from ``value`` in ``direction`` (None when at the bound)."""
    if spec.type == "bool":
        target = direction == "true"
        return None if value is target else target
    if spec.type == "choice":
        i = spec.choices.index(value) if value in spec.choices else -1
        j = i + (1 if direction == "increase" else -1)
        return spec.choices[j] if 0 <= j < len(spec.choices) else None
    sign = 1 if direction == "increase" else -1
    if spec.scale == "log":
        new = value * spec.step if sign > 0 else value / spec.step
    else:
        new = value + sign * spec.step
    new = min(max(new, spec.min), spec.max)
    if spec.type == "int":
        new = int(round(new))  # noqa: RUF046 - round() of a NumPy float is not an int
        if new == value:  # rounding stalled: move by one
            new = value + sign
            if not spec.in_bounds(new):
                return None
    else:
        new = float(round(new, 6))
    return None if new == value else new


def _draft_for_move(ctx: ProposerContext, spec: TunableSpec, new: Any, direction: str,
                    proposer: str, weakness: Weakness, why: str,
                    expected: dict[str, Any]) -> ProposalDraft:
    text, values = _read_values(ctx.settings, spec)
    old = values.get(spec.name)
    diff = make_diff(spec.file, text, replace_value(text, spec.name, new))
    parse_diff(diff)  # never hand out something that is not a diff
    return ProposalDraft(
        proposer=proposer,
        description=f"{weakness.type.value}: set {spec.name} {old!r} -> {new!r} ({why})",
        diff=diff, expected_improvement=expected,
        moves=[TunableMove(spec.name, old, new, direction)])


class TunableProposer:
    """Moves the first declared tunable addressing the weakness one step (see module docstring)."""

    name = "tunable"
    kinds: frozenset[WeaknessType] = frozenset(WeaknessType)

    def handles(self, weakness: Weakness) -> bool:
        """Whether ``weakness``'s kind is one of :attr:`kinds` (see :class:`Proposer`)."""
        return weakness.type in self.kinds

    def _expected(self, ctx: ProposerContext, weakness: Weakness) -> dict[str, Any]:
        return {"metric": ctx.settings.metric_for(weakness.type.value), "direction": "better",
                "from": weakness.metric_value, "towards": weakness.baseline_value}

    def propose(self, weakness: Weakness, ctx: ProposerContext,
                exclude: frozenset[str] = frozenset()) -> ProposalDraft | None:
        """A one-step move of the first declared tunable (not in ``exclude``) addressing the
        weakness in its declared direction, that memory has not blocked; None if there is none.
        """
        kind = weakness.type.value
        for spec in ctx.settings.tunables:
            if spec.name in exclude:
                continue
            direction = spec.addresses.get(kind)
            if direction is None or ctx.memory.is_blocked(kind, spec.name, direction):
                continue
            try:
                _, values = _read_values(ctx.settings, spec)
            except (OSError, tomllib.TOMLDecodeError):
                continue
            value = values.get(spec.name)
            if value is None or not spec.in_bounds(value):
                continue
            new = _step(spec, value, direction)
            if new is None:
                continue
            return _draft_for_move(ctx, spec, new, direction, self.name, weakness,
                                   f"one {direction} step; severity {weakness.severity:.2f}",
                                   self._expected(ctx, weakness))
        return None


class PerformanceProposer(TunableProposer):
    """Latency spikes (slow reasoning), throughput drops, recurring patterns: the kinds whose
    rule names ``"performance"`` (see :mod:`vortex.monitor.rules`).
    """

    name = "performance"
    kinds = kinds_for(name)


class ErrorHandlingProposer(TunableProposer):
    """Prediction-error spikes."""

    name = "error_handling"
    kinds = kinds_for(name)


class MemoryProposer(TunableProposer):
    """Memory pressure."""

    name = "memory"
    kinds = kinds_for(name)


def _nll(logits: Any, labels: Any, t: float) -> float:
    import numpy as np

    z = logits / t
    m = z.max(axis=1, keepdims=True)
    lse = (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))
    return float((lse - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: Any, labels: Any, *, lo: float = 0.05, hi: float = 20.0,
                    tol: float = 1e-4) -> float:
    """Temperature minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search over
    ``log T`` in ``[log lo, log hi]`` finds the minimum to ``tol`` (relative).

    Raises
    ------
    ValueError
        Shapes do not match, labels out of range, non-finite logits, or fewer than 2 samples.
    """
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] < 2:
        raise ValueError(f"need logits (n, k) and labels (n,) with n >= 2; got {logits.shape} "
                         f"and {labels.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinity")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(logits, labels, math.exp(c)), _nll(logits, labels, math.exp(d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


class ConfidenceProposer(TunableProposer):
    """Low or dropping confidence: temperature recalibration.

    The ``temperature_tunable`` is fitted only under a weakness it declares it addresses, and
    proposed only in the direction it declares for it (``addresses = {confidence_low =
    "decrease"}``): with buffered ``calibration_data`` (a callable returning raw logits before
    the temperature and labels, or None when nothing is buffered) it is set to the NLL-optimal
    temperature when that lies in the declared direction. When the fit wants the opposite
    direction (the model is overconfident: a higher temperature lowers confidence further),
    the temperature is not moved at all under this weakness, neither to the fit nor one step
    the declared way (the data says that step makes the NLL worse); the other tunables that
    address the weakness are tried instead. Without data (or fewer than ``min_samples``), or
    when the fitted value equals the current one, it falls back to a one-step tunable move.
    """

    name = "confidence"
    kinds = kinds_for(name)

    def __init__(self, temperature_tunable: str = "temperature", min_samples: int = 50) -> None:
        self.temperature_tunable = temperature_tunable
        self.min_samples = min_samples

    def propose(self, weakness: Weakness, ctx: ProposerContext,
                exclude: frozenset[str] = frozenset()) -> ProposalDraft | None:
        """The fitted temperature when the buffered data supports the declared direction,
        otherwise a one-step tunable move (see the class docstring).

        Parameters
        ----------
        weakness
            The weakness to address.
        ctx
            Settings, outcome memory and ``calibration_data``, called only when the temperature
            tunable declares a direction for this weakness's kind.
        exclude
            Tunables not to move (the one-step fallback skips them).

        Returns
        -------
        ProposalDraft or None
            A draft setting the temperature to the fitted value (its ``expected_improvement``
            carries the NLL before and after, on the buffered samples), a one-step draft of
            another or the same tunable, or None when no tunable can move.

        Raises
        ------
        ValueError
            The buffered logits or labels are unusable (:func:`fit_temperature`), or the
            temperature's file is not valid TOML.
        OSError
            The temperature's file cannot be read while fitting.
        """
        kind = weakness.type.value
        spec = next((t for t in ctx.settings.tunables if t.name == self.temperature_tunable), None)
        declared = spec.addresses.get(kind) if spec is not None else None
        data = ctx.calibration_data() if declared is not None and ctx.calibration_data is not None else None
        if spec is not None and data is not None and len(data[1]) >= self.min_samples:
            logits, labels = data
            lo = spec.min if spec.min is not None else 0.05
            hi = spec.max if spec.max is not None else 20.0
            t = round(fit_temperature(logits, labels, lo=lo, hi=hi), 4)
            _, values = _read_values(ctx.settings, spec)
            cur = values.get(spec.name)
            if isinstance(cur, (int, float)) and abs(t - cur) > 1e-3 * max(abs(cur), 1e-9):
                direction = "increase" if t > cur else "decrease"
                if direction != declared:
                    # the data wants the way the service did not declare for this weakness
                    return super().propose(weakness, ctx, exclude | {spec.name})
                if not ctx.memory.is_blocked(kind, spec.name, direction):
                    import numpy as np

                    before = _nll(np.asarray(logits, float), np.asarray(labels), float(cur))
                    after = _nll(np.asarray(logits, float), np.asarray(labels), t)
                    return _draft_for_move(
                        ctx, spec, t, direction, self.name, weakness,
                        f"temperature fitted on {len(labels)} buffered samples, "
                        f"NLL {before:.4f} -> {after:.4f}",
                        {"metric": ctx.settings.metric_for(kind),
                         "nll_before": before, "nll_after": after})
        return super().propose(weakness, ctx, exclude)


class CommandProposer:
    """Runs ``settings.command_proposer.command`` with the weakness report on stdin; its stdout
    is the diff. A timeout kills the program's process group.
    """

    name = "command"

    def __init__(self, settings: VortexSettings) -> None:
        if settings.command_proposer is None:
            raise ValueError("the target's [tool.vortex] has no command_proposer table")
        self.cfg = settings.command_proposer

    def handles(self, weakness: Weakness) -> bool:
        """Whether ``weakness``'s kind is one the configured ``weaknesses`` lists (every kind
        when it lists none).
        """
        return not self.cfg.weaknesses or weakness.type.value in self.cfg.weaknesses

    def report(self, weakness: Weakness, ctx: ProposerContext) -> dict[str, Any]:
        """What the program is told (as JSON on its stdin): the weakness, the target's root,
        every declared tunable with its current value, the protected paths and the blocked
        moves ``[weakness kind, tunable, direction]``, so it need not propose them again.
        """
        values = current_values(ctx.settings)
        return {"weakness": weakness.to_dict(), "root": ctx.settings.root,
                "tunables": [{**t.to_dict(), "value": values.get(t.name)} for t in ctx.settings.tunables],
                "protected": list(ctx.settings.protected),
                "blocked_moves": [list(b) for b in ctx.memory.blocked()]}

    def propose(self, weakness: Weakness, ctx: ProposerContext) -> ProposalDraft | None:
        """Run the configured command in the target's root with :meth:`report` on stdin, and
        take the unified diff it prints.

        The command runs in a new session; on the timeout its whole process group is killed,
        so nothing it started outlives it.

        Parameters
        ----------
        weakness
            The weakness to address.
        ctx
            Settings (the command, ``{python}`` expanded to the running interpreter), and the
            outcome memory the report lists.

        Returns
        -------
        ProposalDraft
            The printed diff, unchanged; only its form is checked here (it parses as a
            unified diff), whether it applies and helps is the sandbox's verdict.

        Raises
        ------
        RSIError
            The command timed out, exited non-zero (its stderr's tail quoted) or printed no
            usable diff.
        OSError
            The command cannot be started (not found, not executable).
        """
        report = json.dumps(self.report(weakness, ctx))
        cmd = ctx.settings.expand(self.cfg.command)
        proc = subprocess.Popen(cmd, cwd=ctx.settings.root, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(report, timeout=self.cfg.timeout_secs)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RSIError(f"command proposer {cmd[0]!r} timed out after {self.cfg.timeout_secs}s") from None
        if proc.returncode != 0:
            raise RSIError(f"command proposer {cmd[0]!r} exited with {proc.returncode}: {err.strip()[-500:]}")
        try:
            files = parse_diff(out)
        except PatchError as exc:
            raise RSIError(f"command proposer {cmd[0]!r} printed no usable diff: {exc}") from None
        return ProposalDraft(proposer=self.name,
                             description=f"{weakness.type.value}: patch from {os.path.basename(cmd[0])} "
                                         f"touching {', '.join(f.path for f in files)}",
                             diff=out, expected_improvement={
                                 "metric": ctx.settings.metric_for(weakness.type.value)})


def default_proposers(settings: VortexSettings) -> list[Proposer]:
    """The built-in proposers, then the command proposer when the settings configure one."""
    out: list[Proposer] = [PerformanceProposer(), ConfidenceProposer(), ErrorHandlingProposer(),
                           MemoryProposer()]
    if settings.command_proposer is not None:
        out.append(CommandProposer(settings))
    return out
