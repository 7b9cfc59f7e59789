"""`kstore consume` keeps kcat's habits, with kcat 1.7.1 itself as the oracle: the same stored
records read by `kcat -C` through `kstore serve` and by `kstore consume` from the directory give
the same bytes for kcat's format tokens (%s is the value), -J, -K/-D, -o s@TS, -o -N and -e."""

from __future__ import annotations

import json

import pytest

import kstore
from tests.server.conftest import KCAT, kcat, kstore_cli

pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat)")

T0 = 1_700_000_000_000
PARTS = 3


def fill(data):
    """Records with and without keys, headers and values, explicit timestamps, in 3 partitions."""
    with kstore.open(data, retention_check_interval_ms=0) as store:
        store.create_topic("habits", partitions=PARTS)
        p = store.producer(linger_ms=0)
        for i in range(90):
            key = None if i % 7 == 0 else f"key-{i}".encode()
            value = None if i % 11 == 5 else f"välue {i} with spaces".encode()
            headers = [("h1", b"x"), ("h2", f"{i}".encode())] if i % 2 == 0 else None
            p.send("habits", value, key=key, headers=headers, timestamp=T0 + i * 1000,
                   partition=i % PARTS)
        p.flush()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The filled directory, and kcat's view of it through a server on that directory."""
    from tests.server.conftest import KServer
    root = tmp_path_factory.mktemp("habits")
    fill(root / "data")
    srv = KServer(root / "data", [], None, root, "habits").start()
    yield srv
    srv.stop()


def both(srv, kcat_args, kstore_args, partition):
    """(kcat's stdout, kstore consume's stdout) for one partition."""
    want = kcat(srv, "-C", "-t", "habits", "-p", str(partition), "-e", "-q", *kcat_args).stdout
    got = kstore_cli("--data", str(srv.data), "consume", "habits", "-p", str(partition),
                     *kstore_args).stdout
    return want, got


FORMATS = ["%t %p %o %k %s %S %K %T %h|\\n", "%s\\n", "[%k]=%s;", "%o:%s%%\\n"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("partition", range(PARTS))
def test_format_tokens_match_kcat(served, fmt, partition):
    want, got = both(served, ["-f", fmt], ["-f", fmt], partition)
    assert want.count(b"\n") >= 29 or b";" in want
    assert got == want


@pytest.mark.parametrize("partition", range(PARTS))
def test_plain_and_key_and_record_delimiters_match_kcat(served, partition):
    for args in ([], ["-K", "|"], ["-K", "\\t", "-D", "#\\n"], ["-D", "--"]):
        want, got = both(served, args, args, partition)
        assert got == want, args


@pytest.mark.parametrize("partition", range(PARTS))
def test_json_envelope_matches_kcat(served, partition):
    want, got = both(served, ["-J"], ["-J"], partition)
    wl = [json.loads(x) for x in want.splitlines()]
    gl = [json.loads(x) for x in got.splitlines()]
    assert len(wl) == 30 and len(gl) == 30
    for w, g in zip(wl, gl):
        assert g.pop("broker") == -1  # no broker behind an embedded read
        w.pop("broker")
        assert list(g) == list(w) and g == w  # the same fields, in kcat's order
    assert any("headers" in w for w in wl) and any("headers" not in w for w in wl)
    assert any(w["payload"] is None for w in wl) and any(w["key"] is None for w in wl)


@pytest.mark.parametrize("partition", range(PARTS))
def test_start_positions_match_kcat(served, partition):
    for o in (f"s@{T0 + 40_000}", f"s@{T0 + 40_500}", f"s@{T0}", f"s@{T0 + 10**9}", "-4", "7",
              "beginning", "end"):
        want, got = both(served, ["-o", o, "-f", "%o %s\\n"], ["-o", o, "-f", "%o %s\\n"], partition)
        assert got == want, o
        if o.startswith("s@") and int(o[2:]) < T0 + 90_000:
            assert want, o


def test_exit_at_end_flag_and_refusals(served):
    d = str(served.data)
    r = kstore_cli("--data", d, "consume", "habits", "-e", "-f", "%o\\n")
    assert len(r.stdout.splitlines()) == 90
    for args, why in ((["-e", "--follow"], b"mutually exclusive"),
                      (["-J", "--json"], b"mutually exclusive"),
                      (["-J", "-D", "x"], b"-D"),
                      (["-o", "e@5"], b"not supported"),
                      (["-o", "s@yesterday"], b"milliseconds"),
                      (["-o", "s@5", "--timestamp", "5"], b"mutually exclusive"),
                      (["-f", "%x"], b"unknown token %x")):
        r = kstore_cli("--data", d, "consume", "habits", *args, check=False)
        assert r.returncode == 1 and why in r.stderr, (args, r.stderr)
