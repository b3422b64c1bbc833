r"""Unified diffs: generation with :mod:`difflib`, parsing, and what a diff really does.

Applying a diff is left to a real patch tool (``git apply``, see :mod:`vortex.rsi.sandbox` and
:mod:`vortex.rsi.apply`), so what a diff *means* is what git will do with it.
:func:`describe_diff` asks git (``git apply --numstat --summary -z``) which files a diff
touches, how (modified, created, deleted, renamed, copied), with which modes and whether as
binary, and checks that git's reading and :func:`parse_diff`'s reading of the text agree file
by file (paths, kinds, modes, binary, added and removed line counts); a diff on which they
disagree is refused, so the risk rating (which looks at the lines) rates exactly what git
applies. Lines are split on ``\n`` only, as git splits them: a bare CR, form feed or
``\u2028`` inside a line stays inside that line.

Refused always: paths that could write outside the tree (absolute, ``..``, through a symlink,
resolving outside), paths inside ``.git`` or another directory the sandbox does not copy,
control characters in paths, symlinks (mode 120000 in any spelling), submodules and other
non-regular modes. Refused unless the proposer declares them (``allow``): renames, copies,
mode changes (including a new executable file) and binary patches.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field

from ..errors import PatchError, SandboxError
from .trees import SKIP_NAMES

__all__ = [
    "ALLOWABLE",
    "FileChange",
    "FilePatch",
    "Hunk",
    "check_paths",
    "describe_diff",
    "make_diff",
    "parse_diff",
    "touched_paths",
]

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
#: What a proposer may declare, each refused by default.
ALLOWABLE = frozenset({"rename", "copy", "mode", "binary"})
_REGULAR, _EXECUTABLE = 0o100644, 0o100755
_BAD_PATH_CHARS = re.compile(r'[\x00-\x1f\x7f"\\{}]| => ')


@dataclass
class Hunk:
    """One hunk: its line ranges and its removed / added lines (without the +/- sign)."""

    old_start: int
    old_len: int
    new_start: int
    new_len: int
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


@dataclass
class FilePatch:
    """The part of a diff that concerns one file, as its text says (``None`` path = the file is
    created / deleted). Modes are integers (``0o100644``).
    """

    old_path: str | None
    new_path: str | None
    hunks: list[Hunk] = field(default_factory=list)
    binary: bool = False
    new_mode: int | None = None
    old_mode: int | None = None
    rename: bool = False
    copy: bool = False

    @property
    def path(self) -> str:
        """The file's path: the new one, or the old one for a deleted file."""
        return self.new_path if self.new_path is not None else self.old_path  # type: ignore[return-value]

    @property
    def added_lines(self) -> int:
        """Lines the hunks add, as the diff's text says."""
        return sum(len(h.added) for h in self.hunks)

    @property
    def removed_lines(self) -> int:
        """Lines the hunks remove, as the diff's text says."""
        return sum(len(h.removed) for h in self.hunks)


@dataclass(frozen=True)
class FileChange:
    r"""What git does to one file. ``status`` is ``modified``, ``created``, ``deleted``,
    ``renamed`` or ``copied``; ``old_path`` is the source of a rename or copy (else the path);
    ``patch`` carries the hunks (lines split on ``\n`` only).
    """

    path: str
    old_path: str | None
    status: str
    old_mode: int | None
    new_mode: int | None
    binary: bool
    added: int
    removed: int
    patch: FilePatch

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path the change writes or removes (the source of a rename included)."""
        if self.old_path is not None and self.old_path != self.path:
            return (self.old_path, self.path)
        return (self.path,)

    @property
    def mode_changed(self) -> bool:
        """Whether the diff states both modes and they differ (a ``chmod``, say ``+x``)."""
        return (self.old_mode is not None and self.new_mode is not None
                and self.old_mode != self.new_mode)


def _lines(text: str) -> list[str]:
    r"""``text`` split after each ``\n`` and nowhere else (as git and patch split it)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    return [*out, parts[-1]] if parts[-1] else out


def make_diff(path: str, old: str, new: str, *, context: int = 3) -> str:
    """A git-style unified diff (``a/`` ``b/`` prefixes) turning ``old`` into ``new`` for ``path``."""
    if old == new:
        raise PatchError(f"{path}: no change, refusing to make an empty diff")
    lines = difflib.unified_diff(_lines(old), _lines(new), fromfile=f"a/{path}",
                                 tofile=f"b/{path}", n=context)
    out = []
    for line in lines:
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return f"diff --git a/{path} b/{path}\n" + "".join(out)


def _strip(name: str) -> str | None:
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith('"'):
        raise PatchError(f"quoted path {name!r} is not supported")
    if name[:2] in ("a/", "b/"):
        return name[2:]
    return name


def _mode(text: str, line_no: int) -> int:
    try:
        return int(text.strip(), 8)
    except ValueError:
        raise PatchError(f"line {line_no}: malformed mode {text.strip()!r}") from None


def _git_header_names(line: str) -> tuple[str | None, str | None]:
    """Names from ``diff --git a/X b/X``; only the symmetric form is unambiguous."""
    rest = line[len("diff --git "):]
    if rest.startswith("a/"):
        body = rest[2:]
        half = (len(body) - 3) // 2
        if len(body) >= 3 and body[half:half + 3] == " b/" and body[:half] == body[half + 3:]:
            return body[:half], body[:half]
    return None, None


def parse_diff(diff: str) -> list[FilePatch]:
    r"""Parse a unified diff (git style, with its extended headers, or plain ``---``/``+++``).
    Lines are split on ``\n`` only.

    Raises
    ------
    PatchError
        Empty, or not a diff, or a hunk whose line counts do not match its body.
    """
    if not isinstance(diff, str) or not diff.strip():
        raise PatchError("empty diff")
    files: list[FilePatch] = []
    cur: FilePatch | None = None
    lines = diff.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            old, new = _git_header_names(line)
            cur = FilePatch(old_path=old, new_path=new)
            files.append(cur)
        elif cur is not None and not cur.hunks and line.startswith(
                ("old mode ", "new mode ", "new file mode ", "deleted file mode ")):
            value = _mode(line.rsplit(" ", 1)[1], i + 1)
            if line.startswith(("new mode ", "new file mode ")):
                cur.new_mode = value
            else:
                cur.old_mode = value
            if line.startswith("new file mode "):
                cur.old_path = None
            elif line.startswith("deleted file mode "):
                cur.new_path = None
        elif cur is not None and not cur.hunks and line.startswith(
                ("rename from ", "rename to ", "copy from ", "copy to ")):
            kind, direction, name = line.split(" ", 2)
            setattr(cur, "rename" if kind == "rename" else "copy", True)
            if direction == "from":
                cur.old_path = name
            else:
                cur.new_path = name
        elif line.startswith(("Binary files ", "GIT binary patch")) and cur is not None:
            cur.binary = True
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = _strip(line[4:]), _strip(lines[i + 1][4:])
            if cur is None or cur.hunks:
                cur = FilePatch(old_path=old, new_path=new)
                files.append(cur)
            else:
                cur.old_path, cur.new_path = old, new
            i += 1
        elif line.startswith("@@"):
            m = _HUNK.match(line)
            if m is None or cur is None:
                raise PatchError(f"line {i + 1}: malformed hunk header {line!r}")
            h = Hunk(int(m[1]), int(m[2] or 1), int(m[3]), int(m[4] or 1))
            old_left, new_left = h.old_len, h.new_len
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0):
                body = lines[i]
                tag, text = body[:1], body[1:]
                if tag == " " or body == "":
                    old_left -= 1
                    new_left -= 1
                elif tag == "-":
                    h.removed.append(text)
                    old_left -= 1
                elif tag == "+":
                    h.added.append(text)
                    new_left -= 1
                elif tag != "\\":
                    raise PatchError(f"line {i + 1}: unexpected line in hunk {body!r}")
                i += 1
            if old_left != 0 or new_left != 0:
                raise PatchError(f"hunk at line {line!r} has the wrong number of lines")
            cur.hunks.append(h)
            continue
        i += 1
    files = [f for f in files if f.hunks or f.binary or f.new_mode or f.old_mode
             or f.old_path != f.new_path]
    if not files:
        raise PatchError("not a unified diff: no file headers or hunks found")
    return files


def check_paths(files: list[FilePatch], root: str) -> list[str]:
    """Refuse any path that could write outside ``root``; returns the touched relative paths.

    Refused: absolute paths, ``..``/``.``/empty components, control characters and characters
    git would quote, components in :data:`vortex.rsi.trees.SKIP_NAMES` (``.git`` ...), paths
    whose existing part resolves (through symlinks) outside ``root`` or to a symlink, binary
    patches, and symlink, submodule or other non-regular modes in any spelling.
    """
    root = os.path.realpath(root)
    touched: list[str] = []
    for f in files:
        if f.binary:
            raise PatchError(f"{f.path}: binary patches are not accepted")
        for mode in (f.old_mode, f.new_mode):
            if mode is not None and mode not in (_REGULAR, _EXECUTABLE):
                what = "symlinks" if mode & 0o170000 == 0o120000 else f"mode {mode:o}"
                raise PatchError(f"{f.path}: {what} are not accepted (only regular files)")
        for p in (f.old_path, f.new_path):
            if p is None:
                continue
            if os.path.isabs(p) or p.startswith("~"):
                raise PatchError(f"{p}: absolute path escapes the tree")
            if _BAD_PATH_CHARS.search(p):
                raise PatchError(f"{p!r}: control characters, quotes, braces or ' => ' in a path")
            parts = p.split("/")
            if ".." in parts or "" in parts or "." in parts:
                raise PatchError(f"{p}: path component '..', '.' or empty escapes or confuses the tree")
            skipped = [c for c in parts if c.lower() in SKIP_NAMES or c.endswith(".pyc")]
            if skipped:
                raise PatchError(f"{p}: {skipped[0]!r} is tooling state, not part of the tree")
            full = os.path.join(root, *parts)
            if os.path.islink(full):
                raise PatchError(f"{p}: is a symlink; patching through symlinks is refused")
            real = os.path.realpath(full)
            if os.path.commonpath([real, root]) != root:
                raise PatchError(f"{p}: resolves to {real}, outside the tree {root}")
            if p not in touched:
                touched.append(p)
    return touched


# ----------------------------------------------------------------------------- git's reading

_NUMSTAT = re.compile(r"(\d+|-)\t(\d+|-)\t([^\0\n]*)\0")
_CREATE_DELETE = re.compile(r"^ (create|delete)(?: mode (\d+))? (.+)$")
_MODE_CHANGE = re.compile(r"^ mode change (\d+) => (\d+)(?: (.+))?$")
_RENAME_COPY = re.compile(r"^ (rename|copy) (?:(.*/)\{(.+) => (.+)\}|(.+) => (.+)) \((\d+)%\)$")
_REWRITE = re.compile(r"^ rewrite (.+) \((\d+)%\)$")


@dataclass
class _GitFile:
    path: str
    binary: bool
    added: int
    removed: int
    status: str = "modified"
    old_path: str | None = None
    old_mode: int | None = None
    new_mode: int | None = None


def git_executable() -> str:
    """Path of ``git``.

    Raises
    ------
    SandboxError
        git is not installed (an environment problem, not the diff's).
    """
    git = shutil.which("git")
    if git is None:
        raise SandboxError("git is not installed; it is needed to read and apply diffs "
                           "(apt-get install git)")
    return git


def _git_reading(diff: str) -> list[_GitFile]:
    git = git_executable()
    with tempfile.TemporaryDirectory(prefix="vtx-diff-") as scratch:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch,
               "GIT_CEILING_DIRECTORIES": scratch, "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}
        data = diff if diff.endswith("\n") else diff + "\n"
        r = subprocess.run([git, "apply", "--numstat", "--summary", "-z", "-p1", "-"], cwd=scratch,
                           check=False, input=data.encode("utf-8", "surrogateescape"), env=env,
                           capture_output=True, timeout=60)
    if r.returncode != 0:
        raise PatchError(f"git cannot read the diff: {r.stderr.decode('utf-8', 'replace').strip()}")
    out = r.stdout.decode("utf-8", "surrogateescape")
    files: list[_GitFile] = []
    pos = 0
    while (m := _NUMSTAT.match(out, pos)) is not None:
        binary = m[1] == "-"
        files.append(_GitFile(m[3], binary, 0 if binary else int(m[1]), 0 if binary else int(m[2])))
        pos = m.end()
    by_name = {f.path: f for f in files}
    last: _GitFile | None = None
    for line in out[pos:].split("\n"):
        if not line:
            continue
        if (m := _CREATE_DELETE.match(line)) is not None:
            last = by_name.get(m[3])
            if last is None:
                raise PatchError(f"git's summary names a file its numstat does not: {line.strip()!r}")
            last.status = "created" if m[1] == "create" else "deleted"
            mode = int(m[2], 8) if m[2] else None
            if m[1] == "create":
                last.new_mode = mode
            else:
                last.old_mode = mode
        elif (m := _RENAME_COPY.match(line)) is not None:
            old, new = ((m[2] + m[3], m[2] + m[4]) if m[3] is not None else (m[5], m[6]))
            last = by_name.get(new)
            if last is None:
                raise PatchError(f"git's summary names a file its numstat does not: {line.strip()!r}")
            last.status, last.old_path = ("renamed" if m[1] == "rename" else "copied"), old
        elif (m := _REWRITE.match(line)) is not None:
            last = by_name.get(m[1])
        elif (m := _MODE_CHANGE.match(line)) is not None:
            target = by_name.get(m[3]) if m[3] else last
            if target is None:
                raise PatchError(f"git reports a mode change it does not attach to a file: {line.strip()!r}")
            target.old_mode, target.new_mode = int(m[1], 8), int(m[2], 8)
        else:
            raise PatchError(f"git reports something this reader does not know: {line.strip()!r}")
    return files


def _status(f: FilePatch) -> str:
    if f.rename:
        return "renamed"
    if f.copy:
        return "copied"
    if f.old_path is None:
        return "created"
    if f.new_path is None:
        return "deleted"
    return "modified"


def _octal(mode: int | None) -> str:
    return "none" if mode is None else f"{mode:o}"


def describe_diff(diff: str, root: str, *, allow: Collection[str] = ()) -> list[FileChange]:
    """What git will do with ``diff`` applied to the tree ``root``, file by file.

    ``allow`` names what the proposer declared (subset of :data:`ALLOWABLE`: ``rename``,
    ``copy``, ``mode``, ``binary``); anything else of those kinds is refused.

    Raises
    ------
    PatchError
        Malformed, refused (see the module docstring), or read differently by git and by
        :func:`parse_diff`.
    SandboxError
        git is not installed.
    ValueError
        ``allow`` names something that cannot be allowed.
    """
    unknown = set(allow) - ALLOWABLE
    if unknown:
        raise ValueError(f"allow={sorted(unknown)!r}: only {sorted(ALLOWABLE)} can be declared")
    ours = parse_diff(diff)
    binary_ok = "binary" in allow
    check_paths([FilePatch(f.old_path, f.new_path, binary=f.binary and not binary_ok,
                           old_mode=f.old_mode, new_mode=f.new_mode) for f in ours], root)
    theirs = _git_reading(diff)
    if len(ours) != len(theirs):
        raise PatchError(f"git reads {len(theirs)} file patches where the text shows {len(ours)}: "
                         "refusing a diff that does not mean what it shows")
    changes = []
    for f, g in zip(ours, theirs, strict=True):
        status = _status(f)
        mine = (f.path, status, f.binary, (0, 0) if f.binary else (f.added_lines, f.removed_lines))
        git = (g.path, g.status, g.binary, (g.added, g.removed))
        if mine != git or (status in ("renamed", "copied") and f.old_path != g.old_path):
            raise PatchError(f"{f.path}: git reads {git[:3]} (+{g.added} -{g.removed}) where the "
                             f"text shows {mine[:3]} (+{mine[3][0]} -{mine[3][1]}): refusing a "
                             "diff that does not mean what it shows")
        new_mode = g.new_mode if g.new_mode is not None else f.new_mode
        old_mode = g.old_mode if g.old_mode is not None else f.old_mode
        change = FileChange(path=f.path, old_path=f.old_path if status != "created" else None,
                            status=status, old_mode=old_mode, new_mode=new_mode, binary=g.binary,
                            added=g.added, removed=g.removed, patch=f)
        declared = {"renamed": "rename", "copied": "copy"}.get(status)
        if declared is not None and declared not in allow:
            raise PatchError(f"{f.old_path} -> {f.path}: {status} files are refused unless the "
                             f"proposer declares {declared!r}")
        if (change.mode_changed or (status == "created" and new_mode == _EXECUTABLE)) and "mode" not in allow:
            raise PatchError(f"{f.path}: mode {_octal(old_mode)} -> {_octal(new_mode)} is refused "
                             "unless the proposer declares 'mode'")
        changes.append(change)
    # and the same checks on git's reading (modes as git normalised them)
    check_paths([FilePatch(c.old_path, c.path if c.status != "deleted" else None,
                           binary=c.binary and not binary_ok, old_mode=c.old_mode,
                           new_mode=c.new_mode) for c in changes], root)
    return changes


def touched_paths(changes: list[FileChange]) -> list[str]:
    """Every path the changes write or remove, in order, each once."""
    out: list[str] = []
    for c in changes:
        for p in c.paths:
            if p not in out:
                out.append(p)
    return out
