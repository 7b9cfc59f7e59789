"""The benchmark values without pytest, for scripts run in a bare venv (compare_builds.py)."""

from __future__ import annotations

import numpy as np

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
