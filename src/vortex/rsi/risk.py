r"""Risk of a diff, computed from what git will do with it (never declared by the proposer).

The diff is read with :func:`vortex.rsi.diffs.describe_diff` (git's own reading, cross-checked
with the text), then each file is rated; the level of a diff is the highest of its files.

* touches a protected path (glob in ``[tool.vortex] protected``)            → critical
* creates, deletes, renames or copies a file, changes a mode, is binary     → high
* a file that runs or configures code outside the module under test         → high at least:
  dependency manifests (``requirements*.txt``, ``constraints*.txt``, ``pyproject.toml``,
  ``setup.py``, ``setup.cfg``, ``MANIFEST.in``, lock files, ``Pipfile*``), CI configuration
  (``.github/**``, ``.gitlab-ci.yml``, ``.ci/**``, ``tox.ini``, ``noxfile.py``), shell scripts
  (``*.sh`` or a ``#!`` first line), ``conftest.py``, ``sitecustomize.py``,
  ``usercustomize.py``, ``*.pth``
* changes only comments or blank lines                                      → low; a line with a
  line break other than ``\n`` (a bare CR, ``\x0b``, ``\u2028`` ...) is not a comment, nor
  is a coding declaration or a ``#!`` line. Documentation (``*.md``, ``*.rst``, and ``*.txt``
  named README/CHANGELOG/LICENSE/... or under ``docs/``) counts as comments throughout
* changes a declared tunable's value, inside its bounds                     → low
* a tunable outside its bounds or of type ``bool`` (a feature flag)          → medium
* anything else (code, unknown keys)                                        → high
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Collection

from .diffs import FileChange, describe_diff
from .proposal import RiskLevel
from .settings import VortexSettings

__all__ = ["assess_risk", "sensitive_reason"]

_COMMENT_PREFIX = {".py": "#", ".toml": "#", ".cfg": "#", ".ini": "#", ".yaml": "#", ".yml": "#"}
_DOC_EXTS = (".md", ".rst")
_DOC_TXT = re.compile(r"^(readme|changelog|changes|history|license|licence|notice|authors|"
                      r"contributing|contributors|copying|news|todo)([._-].*)?\.txt$", re.I)
_SENSITIVE = (
    ("dependency manifest", ("requirements*.txt", "requirements/*.txt", "constraints*.txt",
                             "pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "*.lock",
                             "Pipfile", "Pipfile.lock", "environment.yml", "environment.yaml")),
    ("CI configuration", (".github/*", ".gitlab-ci.yml", ".ci/*", "tox.ini", "noxfile.py",
                          ".pre-commit-config.yaml", "Makefile", "Jenkinsfile")),
    ("shell script", ("*.sh", "*.bash")),
    ("test runner configuration", ("conftest.py", "pytest.ini")),
    ("interpreter start-up hook", ("sitecustomize.py", "usercustomize.py", "*.pth")),
)
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=]")
_LINE_BREAKS = re.compile(r"[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00]")


def _protected(path: str, globs: tuple[str, ...]) -> str | None:
    for g in globs:
        if fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(path, g.rstrip("/") + "/*") or \
                path == g.rstrip("/"):
            return g
    return None


def _shebang(root: str, path: str, change: FileChange) -> bool:
    first_added = change.patch.hunks[0].added[0] if change.patch.hunks and \
        change.patch.hunks[0].new_start <= 1 and change.patch.hunks[0].added else ""
    if first_added.startswith("#!"):
        return True
    try:
        fd = os.open(os.path.join(root, path), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return os.read(fd, 2) == b"#!"
    finally:
        os.close(fd)


def sensitive_reason(path: str, root: str | None = None, change: FileChange | None = None) -> str | None:
    """Why a change to ``path`` is never low risk (None: no such reason). Matches the path's
    name and, for patterns with a directory, the whole path; with ``root`` and ``change``, a
    file starting with ``#!`` (before or after the change) counts as a script.
    """
    name = os.path.basename(path)
    for why, globs in _SENSITIVE:
        for g in globs:
            if fnmatch.fnmatchcase(name, g) if "/" not in g else (
                    fnmatch.fnmatchcase(path, g) or path.startswith(g.rstrip("*"))):
                return why
    if root is not None and change is not None and _shebang(root, path, change):
        return "script (#! line)"
    return None


def _is_documentation(path: str) -> bool:
    name = os.path.basename(path)
    return (name.lower().endswith(_DOC_EXTS) or bool(_DOC_TXT.match(name))
            or (name.lower().endswith(".txt") and path.split("/")[0] in ("docs", "doc")))


def _is_comment(line: str, ext: str, doc: bool) -> bool:
    body = line[:-1] if line.endswith("\r") else line  # a CRLF file's lines end in \r
    if _LINE_BREAKS.search(body):
        return False  # Python and others split lines there: the rest of the "comment" is code
    s = body.strip()
    if not s:
        return True
    if doc:
        return True
    prefix = _COMMENT_PREFIX.get(ext)
    if prefix is None or not s.startswith(prefix):
        return False
    return not (s.startswith("#!") or (ext == ".py" and _CODING.match(body)))


def _file_risk(c: FileChange, settings: VortexSettings) -> tuple[RiskLevel, list[str]]:
    path = c.path
    if c.status != "modified":
        src = f"{c.old_path} -> " if c.status in ("renamed", "copied") else ""
        return RiskLevel.HIGH, [f"{src}{path}: {c.status}"]
    if c.mode_changed:
        return RiskLevel.HIGH, [f"{path}: mode {c.old_mode:o} -> {c.new_mode:o}"]
    if c.binary:
        return RiskLevel.HIGH, [f"{path}: binary change"]
    why = sensitive_reason(path, settings.root, c)
    if why is not None:
        return RiskLevel.HIGH, [f"{path}: {why}"]
    ext = "." + path.rsplit(".", 1)[-1] if "." in os.path.basename(path) else ""
    doc = _is_documentation(path)
    changed = [(sign, line) for h in c.patch.hunks for sign, lines in (("-", h.removed), ("+", h.added))
               for line in lines]
    if all(_is_comment(line, ext, doc) for _, line in changed):
        return RiskLevel.LOW, [f"{path}: {'documentation' if doc else 'comments or blank lines'} only"]
    specs = {t.name: t for t in settings.tunables if t.file == path}
    if not specs:
        return RiskLevel.HIGH, [f"{path}: changes code"]
    level, reasons = RiskLevel.LOW, []
    removed_keys: list[str] = []
    added_keys: list[str] = []
    for sign, line in changed:
        if _is_comment(line, ext, doc):
            continue
        if _LINE_BREAKS.search(line):
            return RiskLevel.HIGH, [f"{path}: line {line!r} has a line break other than \\n"]
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


def assess_risk(diff: str, settings: VortexSettings, *,
                allow: Collection[str] = ()) -> tuple[RiskLevel, list[str]]:
    """The risk level of ``diff`` against the tree described by ``settings``, with reasons.

    ``allow`` is what the proposer declared (see :func:`vortex.rsi.diffs.describe_diff`).

    Raises
    ------
    PatchError
        The diff cannot be read, or is refused (symlinks, undeclared renames ...).
    SandboxError
        git is not installed.
    """
    changes = describe_diff(diff, settings.root, allow=allow)
    level, reasons = RiskLevel.LOW, []
    for c in changes:
        for p in c.paths:
            glob = _protected(p, settings.protected)
            if glob is not None:
                return RiskLevel.CRITICAL, [f"{p}: protected path (matches {glob!r})"]
        lvl, why = _file_risk(c, settings)
        level = max(level, lvl, key=lambda r: r.rank)
        reasons.extend(why)
    return level, reasons
