import os

import pytest

from vortex.errors import PatchError, SandboxError
from vortex.rsi.diffs import check_paths, describe_diff, make_diff, parse_diff


def test_make_and_parse_roundtrip():
    d = make_diff("a/b.txt", "one\ntwo\nthree\n", "one\n2\nthree\n")
    (f,) = parse_diff(d)
    assert f.old_path == f.new_path == "a/b.txt"
    assert f.hunks[0].removed == ["two"] and f.hunks[0].added == ["2"]


def test_no_newline_at_end():
    d = make_diff("x", "a\nb", "a\nc")
    assert "\\ No newline at end of file" in d
    (f,) = parse_diff(d)
    assert f.hunks[0].added == ["c"]


def test_empty_and_garbage_rejected():
    with pytest.raises(PatchError, match="no change"):
        make_diff("x", "same\n", "same\n")
    with pytest.raises(PatchError, match="empty diff"):
        parse_diff("  \n")
    with pytest.raises(PatchError, match="not a unified diff"):
        parse_diff("hello world\n")
    with pytest.raises(PatchError, match="wrong number of lines"):
        parse_diff("--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n")


def test_plain_diff_without_git_header():
    files = parse_diff("--- x.py\n+++ x.py\n@@ -1 +1 @@\n-a\n+b\n--- y.py\n+++ y.py\n@@ -1 +1 @@\n-c\n+d\n")
    assert [f.path for f in files] == ["x.py", "y.py"]


@pytest.mark.parametrize("path", ["../escape.txt", "sub/../../escape.txt", "/etc/passwd", "~/x"])
def test_escaping_paths_refused(tmp_path, path):
    d = f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n" if not path.startswith(("/", "~")) \
        else f"--- {path}\n+++ {path}\n@@ -1 +1 @@\n-a\n+b\n"
    with pytest.raises(PatchError, match="escape|absolute"):
        check_paths(parse_diff(d), str(tmp_path))


def test_symlink_escape_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("a\n")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    os.symlink(outside / "f.txt", root / "direct.txt")
    with pytest.raises(PatchError, match="outside the tree"):
        check_paths(parse_diff(make_diff("link/f.txt", "a\n", "b\n")), str(root))
    with pytest.raises(PatchError, match="symlink"):
        check_paths(parse_diff(make_diff("direct.txt", "a\n", "b\n")), str(root))


def test_symlink_mode_and_binary_refused(tmp_path):
    d = "diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc\n"
    with pytest.raises(PatchError, match="symlinks"):
        check_paths(parse_diff(d), str(tmp_path))
    d = "diff --git a/b.bin b/b.bin\nBinary files a/b.bin and b/b.bin differ\n"
    with pytest.raises(PatchError, match="binary"):
        check_paths(parse_diff(d), str(tmp_path))


def test_inside_paths_accepted(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("a\n")
    assert check_paths(parse_diff(make_diff("pkg/m.py", "a\n", "b\n")), str(tmp_path)) == ["pkg/m.py"]


# ----------------------------------------------------------------------------- \n only, git's reading

def test_lines_split_on_newline_only(tmp_path):
    """A bare CR, form feed or line separator stays inside its line (git splits on \\n only)."""
    old = "x = 1\n"
    new = "x = 1\n# tuned\rimport os\n# a\x0cb\u2028c\n"
    d = make_diff("mod.py", old, new)
    (f,) = parse_diff(d)
    assert f.hunks[0].added == ["# tuned\rimport os", "# a\x0cb\u2028c"]
    (c,) = describe_diff(d, _tree(tmp_path, {"mod.py": old}))
    assert (c.added, c.removed) == (2, 0)  # git counts the same lines


def _tree(root, files):
    root = str(root)
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as fh:
            fh.write(text)
    return root


def test_describe_reads_modes_renames_copies_from_git(tmp_path):
    root = _tree(tmp_path, {"README.md": "# hi\n", "mod.py": "x = 1\n"})
    rename = ("diff --git a/README.md b/docs/README.md\nsimilarity index 100%\nrename from README.md\n"
              "rename to docs/README.md\n")
    (c,) = describe_diff(rename, root, allow={"rename"})
    assert (c.status, c.old_path, c.path, c.paths) == ("renamed", "README.md", "docs/README.md",
                                                       ("README.md", "docs/README.md"))
    with pytest.raises(PatchError, match="declares 'rename'"):
        describe_diff(rename, root)
    mode = "diff --git a/mod.py b/mod.py\nold mode 100644\nnew mode 100755\n"
    (c,) = describe_diff(mode, root, allow={"mode"})
    assert c.mode_changed and (c.old_mode, c.new_mode) == (0o100644, 0o100755)
    with pytest.raises(PatchError, match="declares 'mode'"):
        describe_diff(mode, root)
    delete = "diff --git a/mod.py b/mod.py\ndeleted file mode 100644\n--- a/mod.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x = 1\n"
    (c,) = describe_diff(delete, root)
    assert (c.status, c.path, c.old_mode, c.removed) == ("deleted", "mod.py", 0o100644, 1)
    with pytest.raises(ValueError, match="symlink"):
        describe_diff(delete, root, allow={"symlink"})


@pytest.mark.parametrize("mode", ["120000", "0120000", "00120000", "160000", "100600"])
def test_only_regular_modes_in_any_spelling(tmp_path, mode):
    root = _tree(tmp_path, {"a.txt": "a\n"})
    d = f"diff --git a/l b/l\nnew file mode {mode}\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc/shadow\n"
    with pytest.raises(PatchError, match="symlinks|mode"):
        check_paths(parse_diff(d), root)
    with pytest.raises(PatchError):
        describe_diff(d, root, allow={"mode"})


def test_hidden_second_file_is_seen(tmp_path):
    """A 'README edit' followed by a second file's header: both files are reported."""
    root = _tree(tmp_path, {"README.md": "# hi\n", "mod.py": "x = 1\n"})
    d = make_diff("README.md", "# hi\n", "# hello\n") + "--- a/mod.py\n+++ b/mod.py\n@@ -1 +1 @@\n-x = 1\n+import os\n"
    assert [c.path for c in describe_diff(d, root)] == ["README.md", "mod.py"]


def test_git_and_text_must_agree(tmp_path, monkeypatch):
    """Where git reads the diff differently from its text, it is refused (checked here by making
    git's reading differ, since no disagreement between git 2.39 and this parser is known)."""
    import vortex.rsi.diffs as diffs

    root = _tree(tmp_path, {"mod.py": "x = 1\n"})
    d = make_diff("mod.py", "x = 1\n", "x = 2\n")
    real = diffs._git_reading
    monkeypatch.setattr(diffs, "_git_reading", lambda text: [
        diffs._GitFile("other.py", g.binary, g.added, g.removed) for g in real(text)])
    with pytest.raises(PatchError, match="does not mean what it shows"):
        describe_diff(d, root)


def test_paths_git_would_quote_and_tooling_dirs_refused(tmp_path):
    root = _tree(tmp_path, {"a.txt": "a\n"})
    for path in ('q"x.txt', "x/.git/config", "__pycache__/m.pyc", "pkg/.venv/x.py"):
        d = f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n"
        with pytest.raises(PatchError):
            check_paths(parse_diff(d), root)


def test_git_missing_is_an_environment_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="git is not installed"):
        describe_diff(make_diff("a.txt", "a\n", "b\n"), _tree(tmp_path, {"a.txt": "a\n"}))
