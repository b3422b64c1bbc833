import math
import os

import pytest

from vortex.monitor.memory import ProcessMemoryProbe, memory_limit_bytes, resident_bytes

GIB = 1 << 30


def fake_system(tmp_path, cgroup_lines, files):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       {8 * GIB // 1024} kB\nMemFree: 1 kB\n")
    (proc / "self" / "cgroup").write_text("\n".join(cgroup_lines) + "\n")
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root), str(proc)


def test_no_cgroup_limit_means_physical_ram(tmp_path):
    root, proc = fake_system(tmp_path, ["0::/svc"], {"svc/memory.max": "max\n"})
    assert memory_limit_bytes(root, proc) == 8 * GIB


def test_cgroup_v2_limit_tightest_along_the_path(tmp_path):
    root, proc = fake_system(tmp_path, ["0::/a/b"], {
        "a/memory.max": f"{2 * GIB}\n", "a/b/memory.max": "max\n"})
    assert memory_limit_bytes(root, proc) == 2 * GIB


def test_cgroup_v1_limit_and_namespaced_root(tmp_path):
    # the process's cgroup path is not visible under the mount: the mount root's file counts
    root, proc = fake_system(tmp_path, ["4:memory:/docker/abc", "1:cpu:/"], {
        "memory/memory.limit_in_bytes": f"{GIB}\n"})
    assert memory_limit_bytes(root, proc) == GIB
    root, proc = fake_system(tmp_path / "x", ["4:memory:/docker/abc"], {
        "memory/memory.limit_in_bytes": "9223372036854771712\n"})
    assert memory_limit_bytes(root, proc) == 8 * GIB


def test_limit_above_ram_is_capped_at_ram(tmp_path):
    root, proc = fake_system(tmp_path, ["0::/"], {"memory.max": f"{64 * GIB}\n"})
    assert memory_limit_bytes(root, proc) == 8 * GIB


def statm_rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_probe_reads_real_resident_memory():
    probe = ProcessMemoryProbe(limit_bytes=GIB)
    before = probe.rss_bytes()
    assert abs(before - statm_rss()) < 8 << 20
    block = b"\x01" * (64 << 20)  # every page written
    grown = probe.rss_bytes()
    assert grown - before > 48 << 20
    assert probe() == pytest.approx(probe.rss_bytes() / GIB, rel=0.05)
    del block
    assert resident_bytes() > 0
    assert 0 < ProcessMemoryProbe()() < 1
    with pytest.raises(ValueError, match="limit_bytes=0"):
        ProcessMemoryProbe(limit_bytes=0)


def test_an_unreadable_statm_gives_no_figure_rather_than_the_peak(tmp_path):
    """The peak resident memory never falls: used instead of the current one, a memory pressure
    could never clear. Unreadable: NaN, and the fallback is reported."""
    from vortex import degraded

    (tmp_path / "self").mkdir()
    statm = tmp_path / "self" / "statm"
    page = os.sysconf("SC_PAGE_SIZE")
    statm.write_text("1000 200 50 1 0 300 0\n")
    probe = ProcessMemoryProbe(limit_bytes=1000 * page, proc=str(tmp_path))
    assert probe.rss_bytes() == 200 * page and probe() == pytest.approx(0.2)
    statm.write_text("1000 120 50 1 0 300 0\n")  # resident memory fell: so does the figure
    assert probe() == pytest.approx(0.12)
    statm.write_text("garbage\n")
    assert probe.rss_bytes() is None and math.isnan(probe())
    assert any(f.component == "memory probe" and str(statm) in f.cause for f in degraded.active())
    missing = ProcessMemoryProbe(limit_bytes=GIB, proc=str(tmp_path / "nowhere"))
    assert missing.rss_bytes() is None and math.isnan(missing())
