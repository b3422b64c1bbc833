import os

import pytest

from vortex.errors import PatchError
from vortex.rsi.diffs import check_paths, make_diff, parse_diff


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
