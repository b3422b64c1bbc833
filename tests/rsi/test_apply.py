"""Journaled apply / rollback, including kill -9 at random moments during apply."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from pathlib import Path

from rsi_support import tree_digest
from vortex.errors import PatchError, RollbackConflictError
from vortex.rsi.apply import Applier
from vortex.rsi.diffs import make_diff



def _tree(root, n=3, size=100):
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        with open(os.path.join(root, f"f{i}.txt"), "w") as fh:
            fh.write("".join(f"line {j} of file {i}\n" for j in range(size)))


def _diff_all(root, n):
    parts = []
    for i in range(n):
        old = Path(os.path.join(root, f"f{i}.txt")).read_text()
        parts.append(make_diff(f"f{i}.txt", old, old.replace("line 5 ", "LINE 5 ")
                               .replace(f"line {len(old.splitlines()) - 2} ", "CHANGED ")))
    return "".join(parts)


def test_apply_and_rollback_byte_for_byte(tmp_path):
    root = str(tmp_path / "t")
    _tree(root)
    os.chmod(os.path.join(root, "f1.txt"), 0o600)
    before = tree_digest(root)
    diff = _diff_all(root, 3) + ("diff --git a/new.txt b/new.txt\nnew file mode 100644\n"
                                 "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hello\n")
    ap = Applier(root, tmp_path / "state")
    rec = ap.apply("p1", diff)
    assert set(rec["summary"]) == {"f0.txt", "f1.txt", "f2.txt", "new.txt"}
    assert "LINE 5" in Path(os.path.join(root, "f0.txt")).read_text()
    assert Path(os.path.join(root, "new.txt")).read_text() == "hello\n"
    assert os.stat(os.path.join(root, "f1.txt")).st_mode & 0o777 == 0o600
    assert ap.is_applied("p1") and os.listdir(ap.journal_dir) == []
    ap.rollback("p1")
    assert tree_digest(root) == before and not ap.is_applied("p1")


def test_rollback_refuses_when_a_file_changed(tmp_path):
    root = str(tmp_path / "t")
    _tree(root)
    ap = Applier(root, tmp_path / "state")
    ap.apply("p1", _diff_all(root, 2))
    with open(os.path.join(root, "f1.txt"), "a") as fh:
        fh.write("edited by a human\n")
    edited = tree_digest(root)
    with pytest.raises(RollbackConflictError, match="f1.txt changed since"):
        ap.rollback("p1")
    assert tree_digest(root) == edited  # nothing touched, not even f0
    with pytest.raises(PatchError, match="no applied record"):
        ap.rollback("unknown")


def test_non_applying_and_escaping_diffs_leave_tree(tmp_path):
    root = str(tmp_path / "t")
    _tree(root)
    before = tree_digest(root)
    ap = Applier(root, tmp_path / "state")
    with pytest.raises(PatchError, match="does not apply"):
        ap.apply("p", make_diff("f0.txt", "not the content\n", "x\n"))
    with pytest.raises(PatchError, match="escape"):
        ap.apply("p", "--- a/../x.txt\n+++ b/../x.txt\n@@ -1 +1 @@\n-a\n+b\n")
    assert tree_digest(root) == before and not ap.is_applied("p")


def test_recover_undoes_an_uncommitted_journal(tmp_path):
    root = str(tmp_path / "t")
    _tree(root)
    before = tree_digest(root)
    ap = Applier(root, tmp_path / "state")
    ap.apply("p1", _diff_all(root, 3))
    after = tree_digest(root)
    ap.rollback("p1")
    # a crash after the journal was written and one file replaced
    original = ap._transaction

    def crash(pid, op, files, record):
        from vortex.rsi._fs import atomic_write_json
        atomic_write_json(os.path.join(ap.journal_dir, f"{pid}.{op}.json"),
                          {"id": pid, "op": op, "state": "pending", "files": files, "record": record})
        ap._write_files(files[:1], "after")
        raise KeyboardInterrupt

    ap._transaction = crash
    with pytest.raises(KeyboardInterrupt):
        ap.apply("p2", _diff_all(root, 3))
    assert tree_digest(root) not in (before, after)
    ap._transaction = original
    assert Applier(root, tmp_path / "state").recover() == ["p2:apply:undone"]
    assert tree_digest(root) == before and not ap.is_applied("p2")


APPLY_LOOP = r"""
import sys
sys.path[:0] = {paths!r}  # the vortex the tests import (installed or built in place)
from vortex.rsi.apply import Applier
ap = Applier({root!r}, {state!r})
diff = open({diff!r}).read()
print("ready", flush=True)
i = 0
while True:
    ap.apply("p%d" % i, diff)
    ap.rollback("p%d" % i)
    i += 1
"""


@pytest.mark.slow
def test_kill_9_during_apply_leaves_before_or_after(tmp_path):
    root = str(tmp_path / "t")
    _tree(root, n=12, size=4000)  # ~12 files of ~90 KB: an apply takes a few ms
    before = tree_digest(root)
    diff = _diff_all(root, 12)
    probe = Applier(root, tmp_path / "probe-state")
    probe.apply("probe", diff)
    after = tree_digest(root)
    probe.rollback("probe")
    assert tree_digest(root) == before
    diff_path = tmp_path / "d.diff"
    diff_path.write_text(diff)
    script = tmp_path / "loop.py"
    script.write_text(APPLY_LOOP.format(paths=[p for p in sys.path if p], root=root, state=str(tmp_path / "state"),
                                        diff=str(diff_path)))
    rng = random.Random(1234)
    outcomes = {"before": 0, "after": 0}
    replays = 0
    for _ in range(25):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        replays += len(Applier(root, tmp_path / "state").recover())
        state = tree_digest(root)
        assert state in (before, after), (
            "tree is neither the before nor the after state: "
            f"{sorted(k for k in set(state) | set(before) if state.get(k) != before.get(k))} differ from before, "
            f"{sorted(k for k in set(state) | set(after) if state.get(k) != after.get(k))} from after")
        outcomes["before" if state == before else "after"] += 1
        # reset to before for the next round (an apply that had committed is rolled back)
        ap = Applier(root, tmp_path / "state")
        assert not [n for n in os.listdir(ap.applied_dir) + os.listdir(ap.journal_dir)
                    if not n.endswith(".json")]  # recover() removed temp files of killed writes
        for name in os.listdir(ap.applied_dir):
            ap.rollback(name[:-5])
        assert tree_digest(root) == before
    print(json.dumps({"outcomes": outcomes, "journal_replays": replays}))
    assert replays > 0  # some kills did land mid-transaction
