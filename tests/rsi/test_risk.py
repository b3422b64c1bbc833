import os

import pytest

from vortex.errors import PatchError
from vortex.rsi.diffs import make_diff
from vortex.rsi.proposal import RiskLevel
from vortex.rsi.risk import assess_risk
from vortex.rsi.settings import load_settings

CONF = "# service settings\nworkers = 4  # threads\nstrict = true\n"


@pytest.fixture
def settings(tiny_tree):
    return load_settings(tiny_tree)


@pytest.mark.parametrize("new,level", [
    ("# service settings, tuned\nworkers = 4  # threads\nstrict = true\n", RiskLevel.LOW),
    ("# service settings\nworkers = 8  # threads\nstrict = true\n", RiskLevel.LOW),
    ("# service settings\nworkers = 64  # threads\nstrict = true\n", RiskLevel.MEDIUM),
    ("# service settings\nworkers = 2.5  # threads\nstrict = true\n", RiskLevel.MEDIUM),
    ("# service settings\nworkers = 4  # threads\nstrict = false\n", RiskLevel.MEDIUM),
    ("# service settings\nworkers = 4  # threads\nstrict = true\nunknown = 1\n", RiskLevel.HIGH),
    ("# service settings\nworkers = 4  # threads\n", RiskLevel.HIGH),
    ("# service settings\nworkers = 4; import os\nstrict = true\n", RiskLevel.HIGH),
])
def test_tunables_file(settings, new, level):
    risk, reasons = assess_risk(make_diff("conf.toml", CONF, new), settings)
    assert risk == level, reasons
    assert reasons


def test_code_comment_vs_code(settings):
    src = "# the module under test\nVALUE = 1\n"
    assert assess_risk(make_diff("mod.py", src, "# the module under test, documented\nVALUE = 1\n"),
                       settings)[0] == RiskLevel.LOW
    assert assess_risk(make_diff("mod.py", src, "# the module under test\nVALUE = 2\n"),
                       settings)[0] == RiskLevel.HIGH


def test_new_file_is_high(settings):
    d = "diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+# hi\n"
    assert assess_risk(d, settings)[0] == RiskLevel.HIGH


def test_protected_is_critical_even_with_low_parts(settings):
    d = (make_diff("conf.toml", CONF, CONF.replace("workers = 4", "workers = 5"))
         + make_diff("tests/test_mod.py", "assert True\n", "assert 1\n"))
    risk, reasons = assess_risk(d, settings)
    assert risk == RiskLevel.CRITICAL and "protected" in reasons[0]
    assert assess_risk(make_diff("pyproject.toml", "a\n", "b\n"), settings)[0] == RiskLevel.CRITICAL


@pytest.mark.parametrize("path,why", [
    ("requirements.txt", "dependency manifest"), ("requirements-dev.txt", "dependency manifest"),
    ("constraints.txt", "dependency manifest"), ("setup.cfg", "dependency manifest"),
    ("setup.py", "dependency manifest"), ("poetry.lock", "dependency manifest"),
    ("uv.lock", "dependency manifest"), ("Pipfile", "dependency manifest"),
    ("MANIFEST.in", "dependency manifest"), (".github/workflows/ci.yml", "CI configuration"),
    (".gitlab-ci.yml", "CI configuration"), (".ci/run", "CI configuration"),
    ("tox.ini", "CI configuration"), ("noxfile.py", "CI configuration"),
    ("scripts/deploy.sh", "shell script"), ("pkg/conftest.py", "test runner configuration"),
    ("sitecustomize.py", "interpreter start-up hook"), ("lib/x.pth", "interpreter start-up hook"),
])
def test_files_that_run_or_configure_code_are_never_low(settings, path, why):
    """Even a comment-only change to them is HIGH: they are not the module under test."""
    full = os.path.join(settings.root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as fh:
        fh.write("# a\nx\n")
    risk, reasons = assess_risk(make_diff(path, "# a\nx\n", "# b\nx\n"), settings)
    assert risk == RiskLevel.HIGH and why in reasons[0], reasons


def test_documentation_is_low_but_data_text_is_not(settings):
    for path, level in (("README.md", RiskLevel.LOW), ("docs/usage.txt", RiskLevel.LOW),
                        ("CHANGELOG.txt", RiskLevel.LOW), ("service/labels.txt", RiskLevel.HIGH)):
        full = os.path.join(settings.root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as fh:
            fh.write("cat\ndog\n")
        risk, reasons = assess_risk(make_diff(path, "cat\ndog\n", "cat\nwolf\n"), settings)
        assert risk == level, (path, reasons)


def test_a_shebang_file_is_a_script(settings):
    with open(os.path.join(settings.root, "tool"), "w") as fh:
        fh.write("#!/usr/bin/env python\n# a\n")
    risk, reasons = assess_risk(make_diff("tool", "#!/usr/bin/env python\n# a\n",
                                          "#!/usr/bin/env python\n# b\n"), settings)
    assert risk == RiskLevel.HIGH and "script" in reasons[0]


@pytest.mark.parametrize("line", ["# tuned\rVALUE = 3", "# tuned\x0bVALUE = 3", "# tuned\u2028VALUE = 3",
                                  "# -*- coding: latin-1 -*-", "#!/bin/sh"])
def test_comment_lookalikes_are_code(settings, line):
    src = "# the module under test\nVALUE = 1\n"
    risk, reasons = assess_risk(make_diff("mod.py", src, line + "\n" + src), settings)
    assert risk == RiskLevel.HIGH, reasons


def test_crlf_comment_is_still_a_comment(settings):
    src = "# the module under test\r\nVALUE = 1\r\n"
    with open(os.path.join(settings.root, "mod.py"), "w", newline="") as fh:
        fh.write(src)
    assert assess_risk(make_diff("mod.py", src, "# the module, documented\r\nVALUE = 1\r\n"),
                       settings)[0] == RiskLevel.LOW


def test_undeclared_rename_is_refused_declared_is_high(settings):
    d = ("diff --git a/conf.toml b/conf2.toml\nsimilarity index 100%\nrename from conf.toml\n"
         "rename to conf2.toml\n")
    with pytest.raises(PatchError, match="rename"):
        assess_risk(d, settings)
    risk, reasons = assess_risk(d, settings, allow={"rename"})
    assert risk == RiskLevel.HIGH and "renamed" in reasons[0]
