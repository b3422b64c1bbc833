"""Unified diffs: generation with :mod:`difflib`, parsing, and path safety checks.

Applying a diff is left to a real patch tool (``git apply``, see :mod:`vortex.rsi.sandbox` and
:mod:`vortex.rsi.apply`); this module only reads diffs to learn which files and lines they touch
and refuses diffs that could write outside the target tree.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field

from ..errors import PatchError

__all__ = ["Hunk", "FilePatch", "make_diff", "parse_diff", "check_paths"]

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


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
    """The part of a diff that concerns one file (``None`` path = created / deleted)."""

    old_path: str | None
    new_path: str | None
    hunks: list[Hunk] = field(default_factory=list)
    binary: bool = False
    new_mode: str | None = None

    @property
    def path(self) -> str:
        return self.new_path if self.new_path is not None else self.old_path  # type: ignore[return-value]


def make_diff(path: str, old: str, new: str, *, context: int = 3) -> str:
    """A git-style unified diff (``a/`` ``b/`` prefixes) turning ``old`` into ``new`` for ``path``."""
    if old == new:
        raise PatchError(f"{path}: no change, refusing to make an empty diff")
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=f"a/{path}", tofile=f"b/{path}", n=context)
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


def parse_diff(diff: str) -> list[FilePatch]:
    """Parse a unified diff (git style or plain ``---``/``+++``).

    Raises
    ------
    PatchError
        Empty, or not a diff, or a hunk whose line counts do not match its body.
    """
    if not isinstance(diff, str) or not diff.strip():
        raise PatchError("empty diff")
    files: list[FilePatch] = []
    cur: FilePatch | None = None
    lines = diff.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            cur = None
            parts = line.split()
            files.append(FilePatch(old_path=_strip(parts[2]) if len(parts) > 2 else None,
                                   new_path=_strip(parts[3]) if len(parts) > 3 else None))
            cur = files[-1]
        elif line.startswith(("new file mode ", "new mode ")) and cur is not None:
            cur.new_mode = line.split()[-1]
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
    files = [f for f in files if f.hunks or f.binary or f.new_mode or f.old_path != f.new_path]
    if not files:
        raise PatchError("not a unified diff: no file headers or hunks found")
    return files


def check_paths(files: list[FilePatch], root: str) -> list[str]:
    """Refuse any path that could write outside ``root``; returns the touched relative paths.

    Refused: absolute paths, ``..`` components, paths whose existing part resolves (through
    symlinks) outside ``root`` or to a symlink, binary patches and symlink modes (120000).
    """
    root = os.path.realpath(root)
    touched: list[str] = []
    for f in files:
        if f.binary:
            raise PatchError(f"{f.path}: binary patches are not accepted")
        if f.new_mode == "120000":
            raise PatchError(f"{f.path}: creating symlinks is not accepted")
        for p in {f.old_path, f.new_path} - {None}:
            assert p is not None
            if os.path.isabs(p) or p.startswith("~"):
                raise PatchError(f"{p}: absolute path escapes the tree")
            parts = p.replace("\\", "/").split("/")
            if ".." in parts or "" in parts or "." in parts:
                raise PatchError(f"{p}: path component '..', '.' or empty escapes or confuses the tree")
            full = os.path.join(root, *parts)
            if os.path.islink(full):
                raise PatchError(f"{p}: is a symlink; patching through symlinks is refused")
            real = os.path.realpath(full)
            if os.path.commonpath([real, root]) != root:
                raise PatchError(f"{p}: resolves to {real}, outside the tree {root}")
            if p not in touched:
                touched.append(p)
    return touched
