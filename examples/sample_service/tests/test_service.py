import shutil

import numpy as np
import pytest

from sample_service import TUNABLES_PATH, Service, make_data
from vortex.tunables import Tunables


@pytest.fixture(scope="module")
def service():
    return Service()


@pytest.mark.parametrize("mode", ["fast", "thorough"])
def test_accuracy(service, mode):
    x, y = make_data(300, seed=99)
    pred = np.array([service.predict(row, mode)[0] for row in x])
    assert (pred == y).mean() >= 0.8


def test_probabilities_sum_to_one(service):
    x, _ = make_data(20, seed=5)
    for row in x:
        _, p, _ = service.predict(row, "thorough")
        assert p.shape == (3,) and np.isclose(p.sum(), 1.0) and (p >= 0).all()


def test_missing_features_follow_the_flag(service):
    x, _ = make_data(1, seed=3)
    row = x[0].copy()
    row[2] = np.nan
    if service.tunables.get("impute_missing"):
        label, p, _ = service.predict(row)
        assert 0 <= label < 3 and np.isfinite(p).all()
    else:
        with pytest.raises(ValueError, match="missing"):
            service.predict(row)


def test_cache_is_bounded(tmp_path):
    path = tmp_path / "t.toml"
    shutil.copy(TUNABLES_PATH, path)
    text = path.read_text()
    import re
    path.write_text(re.sub(r"cache_size = \d+", "cache_size = 16", text))
    svc = Service(Tunables(str(path), check_interval=0))
    x, _ = make_data(40, seed=1)
    for row in x:
        svc.predict(row, "thorough")
    assert len(svc._cache) == 16


def test_wrong_shape_is_refused(service):
    with pytest.raises(ValueError, match="shape"):
        service.predict(np.zeros(3))
