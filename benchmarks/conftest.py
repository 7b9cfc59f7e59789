import numpy as np
import pytest

from .values import WORDS, make_values  # noqa: F401 - shared with compare_builds.py


def make_keys(n, seed=1):
    rng = np.random.default_rng(seed)
    return [b"user-%d" % k for k in rng.integers(0, 1_000_000, size=n)]


@pytest.fixture(scope="session")
def values_100k():
    return make_values(100_000)


@pytest.fixture(scope="session")
def keys_100k():
    return make_keys(100_000)
