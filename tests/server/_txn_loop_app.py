"""The consume-transform-produce loop that tests/server/test_txn_loop_kill.py kills:
``python _txn_loop_app.py <bootstrap>``. Reads ``in`` read_committed from its group's committed
offset, writes ``out-<value>`` to ``out`` in transactions of PER_TXN records that also commit
the input offsets (send_offsets_to_transaction), prints ``ready <offset>`` once set up,
``committed <offset>`` after each transaction and ``done`` at the end of the input."""

from __future__ import annotations

import sys
import time

RECORDS = 600
PER_TXN = 5
PAUSE_S = 0.01  # between transactions: kills land across the whole input
APP_MAX_SECONDS = 30.0


def app(bootstrap: str) -> None:
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "eos-loop",
                  "linger.ms": 1})
    p.init_transactions(20)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-loop",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "auto.offset.reset": "earliest"})
    (tp,) = c.committed([TopicPartition("in", 0)], timeout=20)
    start = max(tp.offset, 0)
    # Manual assignment: a killed member would otherwise hold the group until its session
    # times out. The group's offsets still go through the transaction.
    c.assign([TopicPartition("in", 0, start)])
    print("ready", start, flush=True)
    pos = start
    deadline = time.monotonic() + APP_MAX_SECONDS
    while pos < RECORDS:
        if time.monotonic() > deadline:
            raise SystemExit(f"no end after {APP_MAX_SECONDS}s at offset {pos}")
        msgs = [m for m in c.consume(PER_TXN, 0.5) if not m.error()]
        if not msgs:
            continue
        p.begin_transaction()
        for m in msgs:
            p.produce("out", value=b"out-" + m.value(), partition=0)
        pos = msgs[-1].offset() + 1
        p.send_offsets_to_transaction([TopicPartition("in", 0, pos)],
                                      c.consumer_group_metadata(), 20)
        try:
            p.commit_transaction(20)
        except KafkaException as exc:
            raise SystemExit(f"commit failed: {exc}") from None
        print("committed", pos, flush=True)
        time.sleep(PAUSE_S)
    c.close()
    print("done", flush=True)


if __name__ == "__main__":
    app(sys.argv[1])
