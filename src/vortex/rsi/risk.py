"""Risk of a diff, computed from what it changes (never declared by the proposer).

* touches a protected path (glob in ``[tool.vortex] protected``)      → critical
* changes only comments / blank lines                                 → low
* changes a declared tunable's value, inside its bounds               → low
* a tunable outside its bounds or of type ``bool`` (a feature flag)    → medium
* anything else (code, unknown keys, new or deleted files)            → high

The level of a diff is the highest level of its parts.
"""

from __future__ import annotations

import fnmatch
import tomllib

from .diffs import FilePatch, parse_diff
from .proposal import RiskLevel
from .settings import VortexSettings

__all__ = ["assess_risk"]

_COMMENT_PREFIX = {".py": "#", ".toml": "#", ".cfg": "#", ".ini": "#", ".sh": "#", ".yaml": "#",
                   ".yml": "#", ".txt": "", ".md": ""}


def _protected(path: str, globs: tuple[str, ...]) -> str | None:
    for g in globs:
        if fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(path, g.rstrip("/") + "/*") or \
                path == g.rstrip("/"):
            return g
    return None


def _is_comment(line: str, ext: str) -> bool:
    s = line.strip()
    if not s:
        return True
    prefix = _COMMENT_PREFIX.get(ext)
    if prefix is None:
        return False
    return prefix == "" or s.startswith(prefix)


def _file_risk(f: FilePatch, settings: VortexSettings) -> tuple[RiskLevel, list[str]]:
    path = f.path
    if f.old_path is None or f.new_path is None or f.old_path != f.new_path:
        return RiskLevel.HIGH, [f"{path}: creates, deletes or renames a file"]
    ext = "." + path.rsplit(".", 1)[-1] if "." in path else ""
    changed = [(sign, line) for h in f.hunks for sign, lines in (("-", h.removed), ("+", h.added))
               for line in lines]
    if all(_is_comment(line, ext) for _, line in changed):
        return RiskLevel.LOW, [f"{path}: comments or blank lines only"]
    specs = {t.name: t for t in settings.tunables if t.file == path}
    if not specs:
        return RiskLevel.HIGH, [f"{path}: changes code"]
    level, reasons = RiskLevel.LOW, []
    removed_keys: list[str] = []
    added_keys: list[str] = []
    for sign, line in changed:
        if _is_comment(line, ext):
            continue
        try:
            kv = tomllib.loads(line)
        except tomllib.TOMLDecodeError:
            return RiskLevel.HIGH, [f"{path}: line {line.strip()!r} is not a tunable assignment"]
        if len(kv) != 1:
            return RiskLevel.HIGH, [f"{path}: line {line.strip()!r} is not one tunable assignment"]
        (key, value), = kv.items()
        spec = specs.get(key)
        if spec is None:
            return RiskLevel.HIGH, [f"{path}: {key!r} is not a declared tunable"]
        if sign == "-":
            removed_keys.append(key)
            continue
        added_keys.append(key)
        if spec.type == "bool":
            level = max(level, RiskLevel.MEDIUM, key=lambda r: r.rank)
            reasons.append(f"{key} = {value!r}: flips a flag")
        elif not spec.in_bounds(value):
            level = max(level, RiskLevel.MEDIUM, key=lambda r: r.rank)
            reasons.append(f"{key} = {value!r}: outside its bounds "
                           f"{list(spec.choices) if spec.type == 'choice' else [spec.min, spec.max]}")
        else:
            reasons.append(f"{key} = {value!r}: tunable inside its bounds")
    if sorted(removed_keys) != sorted(added_keys):
        return RiskLevel.HIGH, [f"{path}: adds or removes tunable lines "
                                f"(removed {removed_keys}, added {added_keys})"]
    return level, reasons


def assess_risk(diff: str, settings: VortexSettings) -> tuple[RiskLevel, list[str]]:
    """The risk level of ``diff`` against the tree described by ``settings``, with reasons.

    Raises
    ------
    PatchError
        The diff cannot be parsed.
    """
    files = parse_diff(diff)
    level, reasons = RiskLevel.LOW, []
    for f in files:
        for p in {f.old_path, f.new_path} - {None}:
            glob = _protected(p, settings.protected)  # type: ignore[arg-type]
            if glob is not None:
                return RiskLevel.CRITICAL, [f"{p}: protected path (matches {glob!r})"]
        lvl, why = _file_risk(f, settings)
        level = max(level, lvl, key=lambda r: r.rank)
        reasons.extend(why)
    return level, reasons
