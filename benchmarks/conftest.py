import numpy as np
import pytest

WORDS = [b"user", b"click", b"page", b"id", b"ts", b"home", b"cart", b"item", b"price",
         b"true", b"false", b"null", b"session", b"ref", b"search", b"query"]


def make_values(n, size=100, seed=0):
    """n JSON-like values of exactly ``size`` bytes: realistic for the compressing codecs."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        parts = [b'{"n":%d' % i]
        while sum(map(len, parts)) < size:
            w = WORDS[rng.integers(len(WORDS))]
            parts.append(b',"%s":%d' % (w, rng.integers(100000)))
        out.append(b"".join(parts)[: size - 1] + b"}")
    return out


def make_keys(n, seed=1):
    rng = np.random.default_rng(seed)
    return [b"user-%d" % k for k in rng.integers(0, 1_000_000, size=n)]


@pytest.fixture(scope="session")
def values_100k():
    return make_values(100_000)


@pytest.fixture(scope="session")
def keys_100k():
    return make_keys(100_000)
