import os

import pytest

from rsi_support import SAMPLE, TINY_PYPROJECT
from vortex.errors import ConfigError
from vortex.rsi.settings import load_settings


def _write(tmp_path, text):
    (tmp_path / "pyproject.toml").write_text(text)
    return str(tmp_path)


def test_sample_service_settings():
    s = load_settings(SAMPLE)
    assert s.test_command[0] == "{python}"
    assert [t.name for t in s.tunables] == ["ensemble_size", "temperature", "cache_size", "impute_missing"]
    assert s.tunable("ensemble_size").addresses["latency_spike"] == "decrease"
    assert s.metric_for("confidence_low") == "nll"
    assert s.metric_for("latency_spike") == "cpu_ms"
    assert s.sandbox.memory_mb == 4096
    assert s.expand(s.benchmark_command)[0].endswith("python") or "python" in s.expand(s.benchmark_command)[0]


def test_missing_file_and_table(tmp_path):
    with pytest.raises(ConfigError, match="no pyproject.toml"):
        load_settings(tmp_path)
    with pytest.raises(ConfigError, match=r"missing \[tool.vortex\]"):
        load_settings(_write(tmp_path, "[project]\nname='x'\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write(tmp_path, "[tool.vortex\n"))


@pytest.mark.parametrize("old,new,key", [
    ('test_command = ["{python}"', 'test_command = "pytest" #', "test_command"),
    ("timeout_secs = 8", "timeout_secs = -1", "sandbox.timeout_secs"),
    ("memory_mb = 600", "memory_mb = 1.5", "sandbox.memory_mb"),
    ('type = "int"', 'type = "complex"', "tunables.workers.type"),
    ("min = 1", "min = 20", "tunables.workers.min"),
    ('latency_spike = "increase"', 'latency_spike = "sideways"', "tunables.workers.addresses.latency_spike"),
    ('latency_spike = "increase"', 'bogus_kind = "increase"', "tunables.workers.addresses.bogus_kind"),
    ('file = "conf.toml"', 'file = "../conf.toml"', "tunables.workers.file"),
    ('judge = ["tests"]', 'judge = ["tests"]\nsurprise = 1', "surprise"),
    ('name = "strict"', 'name = "workers"', "tunables"),
])
def test_malformed_key_is_named(tmp_path, old, new, key):
    assert old in TINY_PYPROJECT
    with pytest.raises(ConfigError) as exc:
        load_settings(_write(tmp_path, TINY_PYPROJECT.replace(old, new, 1)))
    assert f"[tool.vortex] {key}=" in str(exc.value)


def test_missing_test_command(tmp_path):
    text = "\n".join(l for l in TINY_PYPROJECT.splitlines() if not l.startswith("test_command"))
    with pytest.raises(ConfigError, match=r"test_command=None: is required"):
        load_settings(_write(tmp_path, text))


def test_root_is_resolved(tiny_tree):
    assert load_settings(tiny_tree).root == os.path.realpath(tiny_tree)
