"""Fixture of the red-team suite: a fresh target tree per attack (see tests/redteam_support.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile

import pytest

from jail_support import new_token
from redteam_support import BENCH_PY, GOOD, TESTS, Attack, write_pyproject
from vortex.rsi.jail import probe_isolation

if not probe_isolation().isolated:
    pytest.skip(f"the red-team suite needs the bwrap jail: {probe_isolation().cause}",
                allow_module_level=True)


@pytest.fixture
def attack(tmp_path, monkeypatch):
    root = tmp_path / "target"
    (root / "tests").mkdir(parents=True)
    write_pyproject(str(root), bench=False)
    (root / "mod.py").write_text(GOOD)
    (root / "tests" / "test_mod.py").write_text(TESTS)
    (root / "bench.py").write_text(BENCH_PY)
    (root / "README.md").write_text("# target\n")
    # a 0600 root file in the tree (copied into the sandbox as it is: unreadable to the jail's uid)
    (root / "tree_key.txt").write_text("tree-secret-" + secrets.token_hex(12) + "\n")
    os.chmod(root / "tree_key.txt", 0o600)
    token = new_token()
    secret_dir = tempfile.mkdtemp(prefix="vxsecret-")
    os.chmod(secret_dir, 0o700)
    secret_path = os.path.join(secret_dir, "key")
    host_secret = "host-secret-" + secrets.token_hex(16)
    with open(secret_path, "w") as fh:
        fh.write(host_secret + "\n")
    os.chmod(secret_path, 0o600)
    env_secret = "env-secret-" + secrets.token_hex(16)
    monkeypatch.setenv("VORTEX_HOST_SECRET", env_secret)
    a = Attack(str(root), token, str(tmp_path / "sbx"), host_secret, env_secret, secret_path)
    yield a
    shutil.rmtree(secret_dir, ignore_errors=True)
    tree_secret = (root / "tree_key.txt").read_text().strip()
    for res in a.results:
        assert tree_secret not in json.dumps(res.to_dict()), "a 0600 file of the tree was read"
