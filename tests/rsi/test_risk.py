import pytest

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
