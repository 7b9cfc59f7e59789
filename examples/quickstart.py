"""First run: a Kafka-format log in ./kstore-data, a million events in and out.

Creates ./kstore-data (or the directory given as the first argument), produces 1,000,000
events (100-byte values, keys, 4 partitions) with the embedded producer, consumes them all back
as records and as numpy columns, checks the count and the last value, and compares with a plain
os.write of the same bytes on the same disk.
"""

import os
import shutil
import sys
import time

import kstore

N = 1_000_000
DATA = sys.argv[1] if len(sys.argv) > 1 else "./kstore-data"
TOPIC = "quickstart"

values = [b'{"user": %7d, "event": "click", "page": "/home/section/item-%05d"}' % (i, i % 99999)
          for i in range(N)]
values = [v.ljust(100, b" ") for v in values]
keys = [b"user-%d" % (i % 10_000) for i in range(N)]

with kstore.open(DATA) as store:
    if TOPIC in store.topics():
        store.delete_topic(TOPIC)
    store.create_topic(TOPIC, partitions=4)

    producer = store.producer()
    t0 = time.perf_counter()
    producer.send_many(TOPIC, values, keys=keys)
    producer.flush()
    t_produce = time.perf_counter() - t0

    consumer = store.consumer(topics=[TOPIC], auto_offset_reset="earliest")
    t0 = time.perf_counter()
    seen, last = 0, {}
    for record in consumer:
        seen += 1
        last[record.partition] = record.value
        if seen == N:
            break
    t_consume = time.perf_counter() - t0
    consumer.close()

    columnar = store.consumer(topics=[TOPIC], auto_offset_reset="earliest")
    t0 = time.perf_counter()
    n_cols = 0
    while n_cols < N:
        n_cols += sum(len(b) for b in columnar.poll_batches(timeout=5))
    t_columns = time.perf_counter() - t0
    columnar.close()
    size = sum(store.partition(TOPIC, p).size_bytes for p in range(4))

assert seen == N and n_cols == N, (seen, n_cols)
assert values[-1] in last.values(), "the last value sent was not read back"

raw_dir = os.path.join(DATA, ".quickstart-raw")
os.makedirs(raw_dir, exist_ok=True)
blob = b"x" * size
fd = os.open(os.path.join(raw_dir, "raw.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t0 = time.perf_counter()
for i in range(0, size, 16384):
    os.write(fd, blob[i:i + 16384])
t_raw = time.perf_counter() - t0
os.close(fd)
shutil.rmtree(raw_dir)

print(f"kstore quickstart: {N:,} events, {size / 1e6:.0f} MB in {DATA}/{TOPIC}-0..3")
print(f"{'phase':<28}{'records/s':>14}{'MB/s':>10}")
for name, secs in (("produce (send_many)", t_produce), ("consume (for record in ...)", t_consume),
                   ("consume (poll_batches)", t_columns), ("plain os.write, same bytes", t_raw)):
    print(f"{name:<28}{N / secs:>14,.0f}{size / secs / 1e6:>10,.0f}")
print("every record came back; the files are Kafka's segment format")
