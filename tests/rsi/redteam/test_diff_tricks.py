"""A diff that is not what the risk rating sees: each trick is either refused (by the sandbox and
by the risk rating alike) or rated above LOW, and never changes anything outside the sandbox."""

import os

import pytest

from redteam_support import GOOD, new_file
from vortex.errors import PatchError
from vortex.rsi.diffs import make_diff
from vortex.rsi.proposal import RiskLevel
from vortex.rsi.risk import assess_risk
from vortex.rsi.settings import load_settings

CODE_IN_A_COMMENT = "import os; os.environ['VXRT_RAN'] = '1'"

REFUSED = {
    "rename smuggles code into mod.py from a README edit": (
        "diff --git a/README.md b/mod.py\nsimilarity index 50%\nrename from README.md\n"
        "rename to mod.py\n--- a/README.md\n+++ b/mod.py\n@@ -1 +1,2 @@\n-# target\n"
        "+# target\n+import os\n", "rename"),
    "pure rename without hunks": (
        "diff --git a/README.md b/notes.md\nsimilarity index 100%\nrename from README.md\n"
        "rename to notes.md\n", "rename"),
    "copy": ("diff --git a/mod.py b/mod2.py\nsimilarity index 100%\ncopy from mod.py\ncopy to mod2.py\n",
             "copy"),
    "symlink mode 0120000 to a host file": (
        "diff --git a/leak b/leak\nnew file mode 0120000\n--- /dev/null\n+++ b/leak\n@@ -0,0 +1 @@\n"
        "+{SECRET}\n\\ No newline at end of file\n", "symlinks"),
    "symlink mode 120000 replacing a file": (
        "diff --git a/README.md b/README.md\nold mode 100644\nnew mode 120000\n--- a/README.md\n"
        "+++ b/README.md\n@@ -1 +1 @@\n-# target\n+/etc/shadow\n\\ No newline at end of file\n",
        "symlinks"),
    "mode change to executable": ("diff --git a/mod.py b/mod.py\nold mode 100644\nnew mode 100755\n",
                                  "mode"),
    "new executable file": (new_file("run.sh", "#!/bin/sh\nid\n", mode="100755"), "mode"),
    "submodule": ("diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000..1111111\n--- /dev/null\n"
                  "+++ b/sub\n@@ -0,0 +1 @@\n+Subproject commit 1111111111111111111111111111111111111111\n",
                  "mode 160000"),
    "binary patch": ("diff --git a/blob.bin b/blob.bin\nnew file mode 100644\nindex 0000000..e69de29\n"
                     "GIT binary patch\nliteral 0\nHcmV?d00001\n\nliteral 0\nHcmV?d00001\n\n", "binary"),
    "path traversal": ("--- a/../../etc/evil.py\n+++ b/../../etc/evil.py\n@@ -0,0 +1 @@\n+x = 1\n",
                       "escapes"),
    "absolute path": ("--- /dev/null\n+++ /etc/evil.py\n@@ -0,0 +1 @@\n+x = 1\n", "absolute"),
    "into .git/hooks": (new_file(".git/hooks/post-checkout", "#!/bin/sh\nid\n"), "tooling state"),
    "through a symlinked directory": (make_diff("linked/x.txt", "a\n", "b\n"), "outside the tree"),
    "rename headers after the file names": (
        "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\nrename from README.md\n"
        "rename to mod.py\n@@ -1 +1 @@\n-# target\n+import os\n", "rename"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_trick_is_refused(attack, tmp_path, name):
    diff, why = REFUSED[name]
    diff = diff.replace("{SECRET}", attack.secret_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("a\n")
    os.symlink(outside, os.path.join(attack.tree, "linked"))
    settings = load_settings(attack.tree)
    with pytest.raises(PatchError) as err:
        assess_risk(diff, settings)
    assert why in str(err.value), (name, str(err.value))
    res = attack.run(diff)
    assert not res.passed and not res.errored and res.errors, name
    assert (outside / "x.txt").read_text() == "a\n"
    assert not os.path.exists("/etc/evil.py")
    for dirpath, dirnames, filenames in os.walk(attack.tree):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            assert not os.path.islink(full) or n == "linked", f"{name}: symlink {full} appeared"


ABOVE_LOW = {
    "code after a bare CR in a comment": "# tuned\r" + CODE_IN_A_COMMENT,
    "code after a form feed in a comment": "# tuned\x0c" + CODE_IN_A_COMMENT,
    "code after a line separator in a comment": "# tuned\u2028" + CODE_IN_A_COMMENT,
    "a coding declaration": "# -*- coding: utf-7 -*-",
    "a shebang line": "#!/bin/sh",
}


@pytest.mark.parametrize("name", sorted(ABOVE_LOW))
def test_comment_tricks_are_not_low_risk(attack, name):
    new = ABOVE_LOW[name] + "\n" + GOOD
    risk, reasons = assess_risk(make_diff("mod.py", GOOD, new), load_settings(attack.tree))
    assert risk.rank > RiskLevel.LOW.rank, (name, reasons)


def test_bare_cr_comment_really_is_code(attack):
    """What the rating must not miss: Python runs the code after the CR."""
    res = attack.run(attack.mod_diff("# tuned\rprint('RAN AFTER CR')\n" + GOOD))
    assert "RAN AFTER CR" in res.test_output


def test_a_new_dependency_is_not_low_risk(attack):
    with open(os.path.join(attack.tree, "requirements.txt"), "w") as fh:
        fh.write("numpy\n")
    risk, reasons = assess_risk(make_diff("requirements.txt", "numpy\n", "numpy\nevil-package\n"),
                                load_settings(attack.tree))
    assert risk == RiskLevel.HIGH and "dependency manifest" in reasons[0]
