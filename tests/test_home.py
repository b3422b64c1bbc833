"""HomeLayout names every path under a home, and creates nothing."""

from __future__ import annotations

import os

from vortex.home import HomeLayout


def test_paths_are_under_the_home_and_nothing_is_created(tmp_path):
    home = tmp_path / "h"
    layout = HomeLayout(home)
    names = [n for n in dir(HomeLayout) if isinstance(getattr(HomeLayout, n), property)]
    paths = [getattr(layout, n) for n in names] + [layout.run_dir(7, 123)]
    assert len(set(paths)) == len(paths), "two names for one path"
    for p in paths:
        if p == layout.shm and p.startswith("/dev/shm/"):  # tmpfs, named after the home
            assert layout.shm == HomeLayout(str(home) + "/.").shm != HomeLayout(tmp_path).shm
            continue
        assert os.path.commonpath([p, str(home)]) == str(home) and p != str(home)
    assert not home.exists() and not layout.exists()


def test_run_directories_name_their_owner():
    layout = HomeLayout("h")
    name = os.path.basename(layout.run_dir(12, 4321))
    assert HomeLayout.run_owner(name) == 4321
    assert HomeLayout.run_owner("run-12") is None and HomeLayout.run_owner("notes") is None
