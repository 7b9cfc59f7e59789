"""Many threads on one Store: 4 producer threads (two sharing one Producer, one with its own,
one using send_many) and 4 consumer threads of one group that split the partitions, all at
once. Every record arrives exactly once per group, each partition in offset order, each key's
records in the order its producer sent them; a second group then reads everything again.

Two ways to join: ``stable`` members commit by hand after each poll and start reading once
all four have joined; ``joining`` members auto-commit and read as soon as they join, so
partitions move between members while records flow (the group's rebalance barrier and the
commit on revocation keep every record to one delivery)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest

import kstore

TOPIC = "events"
PARTITIONS = 8
PRODUCERS = 4
CONSUMERS = 4
PER_PRODUCER = 20000
DEADLINE = 60.0


def key_of(t: int, i: int) -> bytes:
    return f"p{t}-{i % 8}".encode()


def value_of(t: int, i: int) -> bytes:
    return f"{t}:{i}".encode()


def produce(store, t, producer, errors):
    try:
        if t == 3:
            for start in range(0, PER_PRODUCER, 250):
                idx = range(start, min(start + 250, PER_PRODUCER))
                producer.send_many(TOPIC, [value_of(t, i) for i in idx],
                                   keys=[key_of(t, i) for i in idx])
        else:
            for i in range(PER_PRODUCER):
                producer.send(TOPIC, value_of(t, i), key=key_of(t, i))
                if i % 1000 == 999:
                    producer.flush()
        producer.flush()
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append((f"producer {t}", exc))


class ConsumerThread(threading.Thread):
    def __init__(self, store, group, joined, finished, stop, errors, mode):
        super().__init__(daemon=True)
        self.store, self.group, self.mode = store, group, mode
        self.joined, self.finished, self.stop = joined, finished, stop
        self.errors = errors
        self.records = []
        self.count = 0
        self.consumer = None
        self.ready = threading.Event()

    def run(self):
        try:
            stable = self.mode == "stable"
            c = self.consumer = self.store.consumer(
                group=self.group, topics=[TOPIC], auto_offset_reset="earliest",
                enable_auto_commit=not stable, auto_commit_interval_ms=20)
            self.ready.set()
            if stable:
                # Poll only once the whole group has joined.
                self.joined.wait(DEADLINE)
                self.assignment = c.assignment()
            while not self.stop.is_set():
                recs = c.poll(timeout=0.2, max_records=333)
                if recs:
                    self.records += [(r.partition, r.offset, r.key, r.value) for r in recs]
                    self.count += len(recs)
                    if stable:
                        c.commit()
            if stable:
                c.commit()
                self.finished.wait(DEADLINE)  # nobody leaves while another still reads
            c.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.errors.append((f"consumer {self.name}", exc))
            self.ready.set()


def consume_group(store, group, expected, mode, producers=(), errors=None):
    """Run CONSUMERS threads of ``group`` (and the producer threads, which report failures
    to ``errors``) until ``expected`` records arrived or the deadline passed; returns the
    consumer threads."""
    errors = [] if errors is None else errors
    joined = threading.Barrier(CONSUMERS)
    finished = threading.Barrier(CONSUMERS)
    stop = threading.Event()
    consumers = [ConsumerThread(store, group, joined, finished, stop, errors, mode)
                 for _ in range(CONSUMERS)]
    for c in consumers:
        c.start()
    threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in producers]
    for t in threads:
        t.start()
    end = time.monotonic() + DEADLINE
    try:
        while sum(c.count for c in consumers) < expected and not errors:
            if time.monotonic() > end:
                break
            time.sleep(0.01)
    finally:
        stop.set()
        for c in consumers:
            if c.consumer is not None:
                c.consumer.wakeup()
        for t in threads + consumers:
            t.join(max(end - time.monotonic(), 5.0))
    assert not errors, errors
    assert not any(t.is_alive() for t in threads + consumers), "a thread did not finish"
    return consumers


def check_group(store, consumers, group, mode):
    ends = [store.partition(TOPIC, p).log_end_offset for p in range(PARTITIONS)]
    assert sum(ends) == PRODUCERS * PER_PRODUCER
    if mode == "stable":
        # The group split the partitions: each went to exactly one member, 2 each.
        owned = [{p for _, p in c.assignment} for c in consumers]
        assert sorted(p for o in owned for p in o) == list(range(PARTITIONS))
        assert [len(o) for o in owned] == [PARTITIONS // CONSUMERS] * CONSUMERS
        for c, mine in zip(consumers, owned):
            got = {part for part, _, _, _ in c.records}
            assert got <= mine, f"{c.name} got partitions {sorted(got)}, assigned {sorted(mine)}"

    seen = defaultdict(int)
    merged = defaultdict(list)
    for c in consumers:
        by_part = defaultdict(list)
        for part, off, key, value in c.records:
            by_part[part].append(off)
            merged[part].append((off, key, value))
            seen[value] += 1
        for part, offs in by_part.items():
            # Each member reads a partition forward, never back.
            assert offs == sorted(set(offs)), (group, c.name, part)
    for part in range(PARTITIONS):
        recs = sorted(merged[part])
        # Every offset of the partition, once.
        offs = [o for o, _, _ in recs]
        assert offs == list(range(ends[part])), (group, part, len(offs), ends[part])
        # Each key's records in the order its producer sent them.
        last = {}
        for _, key, value in recs:
            t, i = map(int, value.split(b":"))
            assert key == key_of(t, i)
            assert i > last.get(key, -1), (group, part, key, i, last.get(key))
            last[key] = i
    missing = [(t, i) for t in range(PRODUCERS) for i in range(PER_PRODUCER)
               if seen.get(value_of(t, i), 0) == 0]
    dups = [v for v, n in seen.items() if n > 1]
    assert not missing, f"{group}: {len(missing)} records never arrived, e.g. {missing[:5]}"
    assert not dups, f"{group}: {len(dups)} records arrived twice, e.g. {dups[:5]}"
    assert len(seen) == PRODUCERS * PER_PRODUCER
    # Each key lives in one partition.
    parts_of_key = defaultdict(set)
    for c in consumers:
        for part, _, key, _ in c.records:
            parts_of_key[key].add(part)
    assert all(len(ps) == 1 for ps in parts_of_key.values())
    # The group's committed offsets are the log ends.
    assert [store.committed(group, TOPIC, p) for p in range(PARTITIONS)] == ends


@pytest.mark.parametrize("mode", ["stable", "joining"])
def test_four_producers_and_four_consumers_at_once(tmp_path, mode):
    with kstore.open(tmp_path / "data") as store:
        store.create_topic(TOPIC, partitions=PARTITIONS)
        shared = store.producer(linger_ms=2)
        own = store.producer(linger_ms=0, batch_size=4096)
        many = store.producer()
        producer_errors = []
        jobs = [(produce, (store, 0, shared, producer_errors)),
                (produce, (store, 1, shared, producer_errors)),
                (produce, (store, 2, own, producer_errors)),
                (produce, (store, 3, many, producer_errors))]
        consumers = consume_group(store, "g1", PRODUCERS * PER_PRODUCER, mode, jobs,
                                  producer_errors)
        check_group(store, consumers, "g1", mode)

        again = consume_group(store, "g2", PRODUCERS * PER_PRODUCER, mode)
        check_group(store, again, "g2", mode)
        for p in (shared, own, many):
            p.close()
        assert store.groups() == ["g1", "g2"]
