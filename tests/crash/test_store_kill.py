"""Kill -9 at the Store level: a child process produces to a 3-partition topic through
``Store.producer()``, calling ``flush()`` and then printing how many records it has sent (all of
them acknowledged); the parent SIGKILLs it at seeded random moments, some while it opens the
store (recovery, topic creation), most while it produces, then reopens the store and finds
every acknowledged record exactly once, each partition in the order the records were sent.

Run as a script, this file is the child: ``test_store_kill.py child <dir> <iteration> <secs>``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

TOPIC = "events"
PARTITIONS = 3
SEED = 20240607
ITERATIONS = 10
CHILD_MAX_SECONDS = 20.0  # the child gives up (and the test fails) if nobody kills it
CONFIG = {"segment.bytes": 64 * 1024}  # rolls often, so some kills land near a roll


def key_of(seq: int) -> bytes:
    return b"k%d" % (seq % 11)


def value_of(iteration: int, seq: int) -> bytes:
    return b"%d:%d:" % (iteration, seq) + b"x" * ((seq * 37) % 200)


def parse(value: bytes) -> tuple[int, int]:
    it, seq, pad = value.split(b":", 2)
    seq_i = int(seq)
    assert pad == b"x" * ((seq_i * 37) % 200), value[:40]
    return int(it), seq_i


# ---------------------------------------------------------------------------------------------
# The child


def child_main(directory: str, iteration: int, max_seconds: float) -> int:
    import kstore

    os.write(1, b"start\n")
    store = kstore.open(directory)
    if TOPIC not in store.topics():
        store.create_topic(TOPIC, partitions=PARTITIONS, config=CONFIG)
    os.write(1, b"open\n")
    producer = store.producer(linger_ms=1, batch_size=4096)
    rng = random.Random(iteration)
    seq = 0
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        n = rng.randint(1, 60)
        if rng.random() < 0.25:
            producer.send_many(TOPIC, [value_of(iteration, s) for s in range(seq, seq + n)],
                               keys=[key_of(s) for s in range(seq, seq + n)])
        else:
            for s in range(seq, seq + n):
                producer.send(TOPIC, value_of(iteration, s), key=key_of(s))
        seq += n
        producer.flush()
        os.write(1, b"%d\n" % seq)  # one write per line: a kill cannot leave half a line
    os.write(1, b"timeout\n")
    store.close()
    return 0


# ---------------------------------------------------------------------------------------------
# The parent


class Child:
    """One producing process; a thread drains its stdout so it never blocks on the pipe."""

    def __init__(self, directory: Path, iteration: int, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "child", str(directory), str(iteration),
             str(CHILD_MAX_SECONDS)],
            stdout=subprocess.PIPE, stderr=self._stderr)
        self.lines: list[bytes] = []
        self.started = threading.Event()
        self.first_ack = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.endswith(b"\n"):
                break
            self.lines.append(line)
            if line == b"start\n":
                self.started.set()
            elif line[:1].isdigit():
                self.first_ack.set()
        self.started.set()
        self.first_ack.set()

    def kill(self) -> None:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join()
        self._stderr.close()

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def acked(self) -> int:
        """Records acknowledged (sent and flushed) before the kill."""
        n = 0
        for line in self.lines:
            assert line != b"timeout\n", "the child ran to its deadline without being killed"
            if line[:1].isdigit():
                n = int(line)
        return n


def read_store(directory: Path) -> dict[int, list]:
    """Every record of the topic, per partition, in offset order, read through a consumer of a
    freshly opened (so recovered) writer Store."""
    import kstore

    with kstore.open(directory) as store:
        if TOPIC not in store.topics():
            return {}
        assert store.partitions_for(TOPIC) == PARTITIONS
        ends = {p: store.partition(TOPIC, p).log_end_offset for p in range(PARTITIONS)}
        c = store.consumer(group=None, topics=[TOPIC], auto_offset_reset="earliest")
        out: dict[int, list] = defaultdict(list)
        while True:
            recs = c.poll(timeout=0, max_records=10_000)
            if not recs:
                break
            for r in recs:
                out[r.partition].append(r)
        for p in range(PARTITIONS):
            assert [r.offset for r in out[p]] == list(range(ends[p])), f"partition {p}: gaps"
        return out


def check(directory: Path, acked: dict[int, int]) -> int:
    parts = read_store(directory)
    if not parts:
        assert not any(acked.values()), f"the topic is gone but {acked} were acknowledged"
        return 0
    count: dict[tuple[int, int], int] = defaultdict(int)
    partition_of_key: dict[bytes, int] = {}
    for p, recs in parts.items():
        last = (-1, -1)
        for r in recs:
            it, seq = parse(r.value)
            assert r.key == key_of(seq), (p, r.offset)
            assert (it, seq) > last, (
                f"partition {p} offset {r.offset}: record {(it, seq)} after {last}")
            last = (it, seq)
            count[it, seq] += 1
            assert partition_of_key.setdefault(r.key, p) == p, f"key {r.key!r} in two partitions"
    dups = sorted(k for k, n in count.items() if n > 1)
    assert not dups, f"records stored twice: {dups[:5]}"
    for it, n in acked.items():
        missing = [s for s in range(n) if (it, s) not in count]
        assert not missing, (
            f"iteration {it}: {len(missing)} of {n} acknowledged records lost, e.g. {missing[:5]}")
    return sum(count.values())


def test_sigkill_producer_loses_no_flushed_record(tmp_path):
    rng = random.Random(SEED)
    directory = tmp_path / "store"
    acked: dict[int, int] = {}
    stored = 0
    for it in range(ITERATIONS):
        with Child(directory, it, tmp_path / f"child-{it}.stderr") as child:
            if it % 4 == 1:
                # From just before kstore.open: in recovery, topic creation or the first sends.
                assert child.started.wait(30), "child did not start"
                time.sleep(rng.uniform(0, 0.03))
            else:
                assert child.first_ack.wait(30), f"child never acknowledged\n{child.stderr()}"
                time.sleep(rng.uniform(0, 0.08))
        assert child.proc.returncode == -signal.SIGKILL, child.stderr()
        acked[it] = child.acked
        new_stored = check(directory, acked)
        assert new_stored >= stored  # nothing that was there before went away
        stored = new_stored
    assert sum(acked.values()) > ITERATIONS
    assert sum(1 for n in acked.values() if n) >= ITERATIONS // 2
    # A clean reopen finds the same.
    assert check(directory, acked) == stored


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    sys.exit("usage: test_store_kill.py child <dir> <iteration> <max-seconds>")
