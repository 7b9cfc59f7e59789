"""quixstreams with processing_guarantee="exactly-once" through ``kstore serve``: a small
stateless application (JSON in, JSON out) runs end to end on Kafka transactions; its output
reads back read_committed once per input, and its input offsets are committed with it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.server.test_transactions import committed, read_all

pytest.importorskip("quixstreams", reason="quixstreams is not installed: it is the [streams] extra, "
                    "which .ci/run adds after the main suite (pip install -e '.[streams]')")
ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

N = 20
APP = textwrap.dedent("""
    import sys
    from quixstreams import Application
    bootstrap, n, state = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = Application(broker_address=bootstrap, consumer_group="quix-eos",
                      auto_offset_reset="earliest", processing_guarantee="exactly-once",
                      commit_interval=0.5, state_dir=state)
    src = app.topic("q-in", value_deserializer="json")
    dst = app.topic("q-out", value_serializer="json")
    sdf = app.dataframe(src)
    sdf = sdf.apply(lambda v: {"n": v["n"], "double": v["n"] * 2})
    sdf.to_topic(dst)
    app.run(count=n, timeout=60)
    print("quix done", flush=True)
""")


def test_exactly_once_application_end_to_end(kserver, tmp_path):
    srv = kserver("--group-initial-rebalance-delay-ms", "0")
    p = ck.Producer({"bootstrap.servers": srv.bootstrap})
    for i in range(N):
        p.produce("q-in", json.dumps({"n": i}).encode(), partition=0)
    assert p.flush(30) == 0
    r = subprocess.run([sys.executable, "-c", APP, srv.bootstrap, str(N), str(tmp_path / "state")],
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and b"quix done" in r.stdout, r.stderr.decode()[-4000:]
    out = [json.loads(v) for v in read_all(srv.bootstrap, "q-out", "read_committed")]
    assert out == [{"n": i, "double": 2 * i} for i in range(N)]
    assert committed(srv.bootstrap, "quix-eos", "q-in") == N
    # The output went through transactions: its partition holds COMMIT markers.
    srv.stop()
    from kstore import Store
    with Store(srv.data, read_only=True) as s:
        batches = list(s.partition("q-out", 0).read(0, 1 << 20).batches())
    assert any(b.is_control for b in batches)
    assert all(b.is_transactional for b in batches)
