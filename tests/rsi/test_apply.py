"""Journaled apply / rollback, including kill -9 at random moments during apply."""

import hashlib
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
from vortex._io import SEAL_SIZE, owner_token
from vortex.errors import (AppliedRecordCorruptError, CorruptFileError, JournalCorruptError,
                           PatchError, RollbackConflictError, TreeChangedError)
from vortex.rsi.apply import Applier, remove_orphan_scratch
from vortex.rsi.trees import tree_sha256
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
        ap._save_journal(os.path.join(ap.journal_dir, f"{pid}.{op}.json"),
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


def _secret(tmp_path):
    """A 0600 file outside the tree, as a host key would be."""
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("line 0 of file 0\nTOP-SECRET-KEY-0123456789\n")
    os.chmod(secret, 0o600)
    return secret


@pytest.mark.parametrize("where", ["file", "directory"])
def test_a_symlink_planted_in_the_tree_is_never_followed(tmp_path, where):
    root = str(tmp_path / "t")
    _tree(root, n=1)
    secret = _secret(tmp_path)
    if where == "file":  # tree/conf.txt -> /outside/secret.txt
        os.symlink(secret, os.path.join(root, "conf.txt"))
        rel = "conf.txt"
    else:  # tree/pkg -> /outside: pkg/secret.txt is the secret
        os.symlink(secret.parent, os.path.join(root, "pkg"))
        rel = "pkg/secret.txt"
    # a diff that applies cleanly *through* the link: git would read the secret and write it
    # (patched) into the tree as a regular 0644 file
    diff = make_diff(rel, secret.read_text(), secret.read_text() + "appended\n")
    before, secret_before = tree_digest(root), secret.read_bytes()
    ap = Applier(root, tmp_path / "state")
    with pytest.raises(PatchError, match="symlink"):
        ap.apply("p", diff)
    assert tree_digest(root) == before and secret.read_bytes() == secret_before
    assert os.stat(secret).st_mode & 0o777 == 0o600
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            if not os.path.islink(full):
                assert b"TOP-SECRET" not in Path(full).read_bytes()
    assert not ap.is_applied("p") and os.listdir(ap.journal_dir) == []


def test_apply_writes_only_what_was_tested(tmp_path):
    root = str(tmp_path / "t")
    _tree(root)
    diff = _diff_all(root, 2)
    ap = Applier(root, tmp_path / "state")
    expected = {rel: hashlib.sha256(data).hexdigest() for rel, data in ap.compute(diff).items()}
    before = tree_digest(root)
    wrong = dict(expected, **{"f1.txt": "0" * 64})
    with pytest.raises(PatchError, match="f1.txt: the file this apply would write .* not the one the sandbox tested"):
        ap.apply("p", diff, tested_files=wrong)
    with pytest.raises(PatchError, match="f0.txt"):  # a touched path the test never saw
        ap.apply("p", diff, tested_files={"f1.txt": expected["f1.txt"]})
    assert tree_digest(root) == before and not ap.is_applied("p")
    tested_tree = tree_sha256(root)
    with open(os.path.join(root, "f2.txt"), "a") as fh:  # an untouched file changes meanwhile
        fh.write("edited\n")
    edited = tree_digest(root)
    with pytest.raises(TreeChangedError, match="changed since proposal p was tested"):
        ap.apply("p", diff, tested_files=expected, tested_tree=tested_tree)
    assert tree_digest(root) == edited
    ap.apply("p", diff, tested_files=expected, tested_tree=tree_sha256(root))
    assert ap.is_applied("p")


def _pending_journal(tmp_path):
    """A tree mid-apply: journal written, first file replaced, then the process died."""
    root = str(tmp_path / "t")
    _tree(root)
    before = tree_digest(root)
    ap = Applier(root, tmp_path / "state")
    new = ap.compute(_diff_all(root, 3))
    files = [{"path": rel, "before": Path(root, rel).read_bytes(), "after": after, "mode": 0o644}
             for rel, after in sorted(new.items())]
    jpath = os.path.join(ap.journal_dir, "p1.apply.json")
    ap._save_journal(jpath, {"id": "p1", "op": "apply", "state": "pending", "files": files,
                             "record": {"id": "p1", "files": files, "summary": {}}})
    ap._write_files(files[:1], "after")
    return root, ap, jpath, before


def test_a_damaged_journal_is_never_replayed(tmp_path):
    root, ap, jpath, before = _pending_journal(tmp_path)
    raw = Path(jpath).read_bytes()
    doc = json.loads(raw[:-SEAL_SIZE])
    b64 = doc["files"][0]["before"]
    at = raw.index(b64.encode()) + 40  # one flipped bit inside the saved original of f0.txt
    Path(jpath).write_bytes(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:])
    half = tree_digest(root)
    assert half != before
    assert Applier(root, ap.home).recover() == ["p1:apply:corrupt"]
    assert tree_digest(root) == half  # nothing written from it
    (aside,) = [n for n in os.listdir(ap.journal_dir)]
    assert aside.startswith("p1.apply.json.corrupt-")
    (problem,) = ap.problems()
    assert isinstance(problem, JournalCorruptError) and isinstance(problem, CorruptFileError)
    assert problem.path.endswith(aside) and "f0.txt, f1.txt, f2.txt" in problem.problem
    assert f"delete {problem.path}" in problem.remedy
    with pytest.raises(JournalCorruptError, match="p1.apply.json.corrupt-"):
        ap.apply("p2", make_diff("f0.txt", "x\n", "y\n"))
    assert tree_digest(root) == half
    os.unlink(problem.path)  # a person checked the tree
    assert ap.problems() == []


def test_a_journal_that_is_not_json_names_its_file(tmp_path):
    root, ap, jpath, before = _pending_journal(tmp_path)
    Path(jpath).write_bytes(Path(jpath).read_bytes()[:5000])  # cut short
    assert ap.recover() == ["p1:apply:corrupt"]
    (problem,) = ap.problems()
    assert "p1.apply.json" in str(problem) and "f0.txt" in problem.problem


def test_a_damaged_applied_record_refuses_the_rollback(tmp_path):
    root = str(tmp_path / "t")
    _tree(root)
    ap = Applier(root, tmp_path / "state")
    ap.apply("p1", _diff_all(root, 2))
    applied = tree_digest(root)
    rec = Path(ap.applied_dir, "p1.json")
    raw = rec.read_bytes()
    at = raw.index(b'"after": "') + 30
    rec.write_bytes(raw[:at] + bytes([raw[at] ^ 0x02]) + raw[at + 1:])
    with pytest.raises(AppliedRecordCorruptError, match="p1.json"):
        ap.rollback("p1")
    assert tree_digest(root) == applied


def test_orphan_scratch_directories_of_dead_processes_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    from vortex._io import _start_time

    dead = f"{done.stdout.strip()}.{_start_time(os.getpid())}"  # that pid with another start
    tmp = str(tmp_path / "tmp")
    os.makedirs(os.path.join(tmp, f"vtx-apply-{dead}-abc", "tree"))
    os.makedirs(os.path.join(tmp, f"vtx-apply-{owner_token()}-def"))  # ours: alive
    os.makedirs(os.path.join(tmp, "vtx-apply-legacy"))  # no owner: cannot be proven orphaned
    assert remove_orphan_scratch(tmp) == [f"vtx-apply-{dead}-abc"]
    assert sorted(os.listdir(tmp)) == sorted([f"vtx-apply-{owner_token()}-def", "vtx-apply-legacy"])
