"""Transactions' cost, measured in one run (issue 17's figures; no thresholds anywhere):

* produce: records/s of transactions of 100 records (begin, 100 sends, commit) against the same
  records sent without a transaction, and
* consume: records/s of a read_committed consumer against a read_uncommitted one over the same
  transactional data (every tenth transaction aborted),

both embedded (``store.producer(transactional_id=...)``, ``poll_batches``/``poll``) and through
``kstore serve`` with confluent-kafka (skipped when it is not installed). Rounds alternate the
variants (A B A B ...) so that load from other jobs falls on both; medians and their ratio are
printed.

    python benchmarks/txn_figures.py [--records 200000] [--rounds 3] [--no-server]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import kstore

PER_TXN = 100
VALUE = b"x" * 100


def embedded_produce(d: str, n: int, txn: bool) -> float:
    with kstore.Store(d) as s:
        s.create_topic("t", 1, {"segment.bytes": 1 << 30})
        p = s.producer(transactional_id="bench") if txn else s.producer()
        t = time.perf_counter()
        if txn:
            for i in range(0, n, PER_TXN):
                p.begin_transaction()
                for _ in range(PER_TXN):
                    p.send("t", VALUE, partition=0)
                if (i // PER_TXN) % 10 == 9:
                    p.abort_transaction()
                else:
                    p.commit_transaction()
        else:
            for _ in range(n):
                p.send("t", VALUE, partition=0)
            p.flush()
        took = time.perf_counter() - t
        p.close()
    return n / took


def embedded_consume(d: str, isolation: str, batches: bool) -> float:
    with kstore.Store(d) as s:
        c = s.consumer(isolation_level=isolation, auto_offset_reset="earliest")
        c.assign([("t", 0)])
        got = 0
        t = time.perf_counter()
        while True:
            if batches:
                parts = c.poll_batches(timeout=0)
                if not parts:
                    break
                got += sum(len(pc.offsets) for pc in parts)
            else:
                recs = c.poll(timeout=0, max_records=10_000)
                if not recs:
                    break
                got += len(recs)
        took = time.perf_counter() - t
    return got / took


SERVER_PRODUCE = r"""
import sys, time
from confluent_kafka import Producer
bootstrap, n, txn = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
if txn:
    conf["transactional.id"] = "bench-" + sys.argv[4]
p = Producer(conf)
if txn:
    p.init_transactions(30)
v = b"x" * 100
t = time.perf_counter()
if txn:
    for i in range(0, n, 100):
        p.begin_transaction()
        for _ in range(100):
            p.produce(sys.argv[4], v, partition=0)
            p.poll(0)
        if (i // 100) % 10 == 9:
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)
else:
    for _ in range(n):
        p.produce(sys.argv[4], v, partition=0)
        p.poll(0)
    p.flush(30)
print(n / (time.perf_counter() - t))
"""

SERVER_CONSUME = r"""
import sys, time
from confluent_kafka import Consumer, TopicPartition, KafkaError
bootstrap, topic, isolation = sys.argv[1], sys.argv[2], sys.argv[3]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.partition.eof": True,
              "isolation.level": isolation, "enable.auto.commit": False})
c.assign([TopicPartition(topic, 0, 0)])
got = 0
t = None
while True:
    msgs = c.consume(10000, 1.0)
    if t is None:
        t = time.perf_counter()
    done = False
    for m in msgs:
        if m.error():
            done = m.error().code() == KafkaError._PARTITION_EOF
        else:
            got += 1
    if done:
        break
print(got / (time.perf_counter() - t))
c.close()
"""


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def row(name: str, a: list[float], b: list[float], la: str, lb: str) -> None:
    print(f"{name:42s} {la}: {med(a):>12,.0f}/s   {lb}: {med(b):>12,.0f}/s   "
          f"ratio {med(b) / med(a):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--server-records", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-server", action="store_true")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="kstore-txn-bench-")
    try:
        plain, txn = [], []
        for r in range(args.rounds):
            plain.append(embedded_produce(f"{root}/p{r}", args.records, False))
            txn.append(embedded_produce(f"{root}/t{r}", args.records, True))
        print(f"embedded, {args.records} records of 100 B, {PER_TXN} per transaction, "
              f"every tenth aborted; medians of {args.rounds}")
        row("produce: send()", plain, txn, "plain", "transactional")
        for batches in (True, False):
            unc, com = [], []
            for _ in range(args.rounds):
                unc.append(embedded_consume(f"{root}/t0", "read_uncommitted", batches))
                com.append(embedded_consume(f"{root}/t0", "read_committed", batches))
            row("consume: " + ("poll_batches()" if batches else "poll()"), unc, com,
                "read_uncommitted", "read_committed")
        if args.no_server:
            return
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            print("confluent-kafka is not installed: no server figures")
            return
        srv = subprocess.Popen([sys.executable, "-m", "kstore", "serve", "--data", f"{root}/srv",
                                "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
        try:
            port = None
            while port is None:
                line = srv.stderr.readline()
                if not line:
                    raise SystemExit("kstore serve did not start")
                if "kstore serving" in line:
                    port = int(line.rsplit(":", 1)[1])
            boot = f"127.0.0.1:{port}"
            n = args.server_records

            def run(code: str, *a: str) -> float:
                out = subprocess.run([sys.executable, "-c", code, boot, *a], check=True,
                                     capture_output=True, text=True, timeout=600).stdout
                return float(out.split()[-1])

            plain, txn = [], []
            for r in range(args.rounds):
                plain.append(run(SERVER_PRODUCE, str(n), "0", f"plain{r}"))
                txn.append(run(SERVER_PRODUCE, str(n), "1", f"txn{r}"))
            print(f"kstore serve + confluent-kafka, {n} records of 100 B; medians of "
                  f"{args.rounds}")
            row("produce (idempotent vs transactional)", plain, txn, "plain", "transactional")
            unc, com = [], []
            for _ in range(args.rounds):
                unc.append(run(SERVER_CONSUME, "txn0", "read_uncommitted"))
                com.append(run(SERVER_CONSUME, "txn0", "read_committed"))
            row("consume", unc, com, "read_uncommitted", "read_committed")
        finally:
            srv.terminate()
            srv.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
