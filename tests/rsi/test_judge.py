"""The verdict's pieces: the original's pytest configuration, the result channel, outcome and
benchmark comparisons."""

import json
from pathlib import Path

import pytest

from vortex.rsi.diffs import make_diff
from vortex.rsi.jail import probe_isolation
from vortex.rsi.judge import (TestOutcomes, compare_outcomes, find_pytest_config, parse_benchmark,
                              read_channel)
from vortex.rsi.sandbox import Sandbox
from vortex.rsi.settings import load_settings


def test_config_is_found_as_pytest_would_but_never_above_the_tree(tmp_path):
    root = tmp_path / "tree"
    (root / "tests").mkdir(parents=True)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # above the tree: never used
    assert find_pytest_config(str(root), ["tests"]) is None
    (root / "pyproject.toml").write_text("[tool.vortex]\n")  # no pytest table: not a config
    assert find_pytest_config(str(root), ["tests"]) is None
    (root / "setup.cfg").write_text("[tool:pytest]\naddopts = -q\n")
    assert find_pytest_config(str(root), ["tests"]) == str(root / "setup.cfg")
    (root / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = '-q'\n")
    assert find_pytest_config(str(root), ["tests"]) == str(root / "pyproject.toml")
    (root / "tests" / "pytest.ini").write_text("[pytest]\n")  # nearer the test paths: first
    assert find_pytest_config(str(root), ["-q", "tests", "-k", "x"]) == str(root / "tests" / "pytest.ini")


@pytest.mark.skipif(not probe_isolation().isolated, reason="no bwrap jail on this host")
def test_the_originals_configuration_is_the_judges(tiny_tree, tmp_path):
    """The original's pytest.ini (test functions named check_*) configures both runs; the
    candidate's own pytest.ini is not read."""
    Path(tiny_tree, "pytest.ini").write_text("[pytest]\npython_functions = check_*\n")
    Path(tiny_tree, "tests", "test_mod.py").write_text(
        "import mod\n\n\ndef check_value():\n    assert mod.VALUE == 1\n\n\ndef test_ignored():\n"
        "    assert False\n")
    sandbox = Sandbox(load_settings(tiny_tree), base_dir=str(tmp_path / "sbx"))
    res = sandbox.test(make_diff("mod.py", "# the module under test\nVALUE = 1\n", "VALUE = 1\n"))
    assert res.passed and res.tests_run == res.baseline_tests == 1
    ini = make_diff("pytest.ini", "[pytest]\npython_functions = check_*\n", "[pytest]\n")
    res = sandbox.test(ini + make_diff("mod.py", "# the module under test\nVALUE = 1\n", "VALUE = 2\n"))
    assert not res.passed and res.tests_failed == 1 and res.tests_run == 1


@pytest.mark.skipif(not probe_isolation().isolated, reason="no bwrap jail on this host")
@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="kernel without autogroups")
def test_the_judge_runs_below_the_serving_processes(tiny_tree, tmp_path):
    """The tests under judgement run at niceness +10, in the jail's session, whose autogroup
    is at nice 19: seen by the tests themselves (they fail otherwise). This process's own
    autogroup is untouched."""
    import os

    niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    with open("/proc/self/autogroup") as f:
        ours = f.read()
    Path(tiny_tree, "tests", "test_mod.py").write_text(
        "import os\n\n\ndef test_priority():\n"
        f"    assert os.getpriority(os.PRIO_PROCESS, 0) == {niceness}\n"
        "    with open('/proc/self/autogroup') as f:\n"
        "        assert f.read().split()[-1] == '19'\n")
    sandbox = Sandbox(load_settings(tiny_tree), base_dir=str(tmp_path / "sbx"))
    res = sandbox.test(make_diff("mod.py", "# the module under test\nVALUE = 1\n", "VALUE = 1\n"))
    assert res.passed and res.tests_run == res.baseline_tests == 1 and res.tests_failed == 0, res.test_output
    with open("/proc/self/autogroup") as f:
        assert f.read() == ours


def _records(nonce, *recs):
    return b"".join(json.dumps({"nonce": nonce, **r}).encode() + b"\n" for r in recs)


def test_channel_takes_only_the_runners_records():
    n = "a" * 32
    rep = read_channel(_records(n, {"kind": "ready"}, {"kind": "result", "outcomes": {}}), n)
    assert rep.ready and rep.result is not None and rep.problems == []
    forged = read_channel(_records("b" * 32, {"kind": "result"}) + _records(n, {"kind": "ready"}), n)
    assert forged.result is None and "forged" in forged.problems[0]
    twice = read_channel(_records(n, {"kind": "ready"}, {"kind": "result"}, {"kind": "result"}), n)
    assert "second result" in twice.problems[0]
    early = read_channel(_records(n, {"kind": "result"}), n)  # a result before ready
    assert early.result is None and early.problems
    assert read_channel(_records(n, {"kind": "error", "error": "No module named 'pytest'"}), n).error


def test_outcomes_against_the_original():
    base = TestOutcomes({"t::a": "passed", "t::b": "skipped", "t::c": "failed"})
    in_judge = lambda p: p.startswith("tests/")  # noqa: E731
    assert compare_outcomes(base, TestOutcomes({"t::a": "passed", "t::b": "skipped", "t::c": "passed"}),
                            in_judge) == []
    assert "1 failed" in compare_outcomes(base, TestOutcomes({"t::a": "passed", "t::b": "skipped",
                                                              "t::c": "failed"}), in_judge)[0]
    assert "did not run" in compare_outcomes(base, TestOutcomes({"t::a": "passed", "t::b": "skipped"}),
                                             in_judge)[0]
    assert "does not have" in compare_outcomes(base, TestOutcomes(
        {"t::a": "passed", "t::b": "skipped", "t::c": "passed", "t::d": "passed"}), in_judge)[0]
    by_code = TestOutcomes({"t::a": "skipped", "t::b": "skipped", "t::c": "passed"},
                           origins={"t::a": "mod.py"})
    assert "by mod.py" in compare_outcomes(base, by_code, in_judge)[0]
    by_test = TestOutcomes({"t::a": "skipped", "t::b": "skipped", "t::c": "passed"},
                           origins={"t::a": "tests/test_x.py"})
    assert compare_outcomes(base, by_test, in_judge) == []


@pytest.mark.parametrize("record", [
    {"outcomes": ["t::a"]}, {"outcomes": {"t::a": "passed"}, "origins": ["t::a"]},
    {"outcomes": {"t::a": "passed"}, "origins": "mod.py"}, {"outcomes": {}, "exit": "x"},
    {"outcomes": {}, "collect_errors": 5}, {"outcomes": {}, "exit": [1]},
], ids=repr)
def test_a_malformed_result_record_is_a_value_or_type_error(record):
    """The sandbox errors or rejects a run on ValueError/TypeError; nothing else may escape."""
    with pytest.raises((ValueError, TypeError)):
        TestOutcomes.from_record(record)


def test_benchmark_takes_exactly_one_object():
    one = {"exit": 0, "objects": [{"t": {"value": 1.5, "better": "lower"}}]}
    assert parse_benchmark(one) == {"t": (1.5, "lower")}
    with pytest.raises(ValueError, match="exactly one"):
        parse_benchmark({"exit": 0, "objects": one["objects"] * 2})
    with pytest.raises(ValueError, match="exactly one"):
        parse_benchmark({"exit": 0, "objects": []})
    with pytest.raises(ValueError, match="exited with status 3"):
        parse_benchmark({"exit": 3, "objects": one["objects"]})
    for bad in ({"value": float("nan"), "better": "lower"}, {"value": True, "better": "lower"},
                {"value": 1, "better": "sideways"}):
        with pytest.raises(ValueError, match="finite number"):
            parse_benchmark({"exit": 0, "objects": [{"t": bad}]})
