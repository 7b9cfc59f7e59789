"""First run: encode a million events into Kafka RecordBatch v2, decode them back, and time both."""

import time

from kstore.records import columns, encode_batches, iter_batches

N = 1_000_000
values = [b'{"user": %7d, "event": "click", "page": "/home"}' % i for i in range(N)]
keys = [b"user-%d" % (i % 1000) for i in range(N)]

t0 = time.perf_counter()
raw = encode_batches(values, keys, max_batch_bytes=16384)
t1 = time.perf_counter()
cols = columns(raw)
t2 = time.perf_counter()
batches = sum(1 for _ in iter_batches(raw))

assert len(cols) == N and cols.values()[-1] == values[-1]
mb = len(raw) / 1e6
print(f"encoded {N:,} records into {batches:,} batches ({mb:.1f} MB) "
      f"in {t1 - t0:.3f} s: {N / (t1 - t0) / 1e6:.1f} M records/s")
print(f"decoded them to numpy columns in {t2 - t1:.3f} s: {N / (t2 - t1) / 1e6:.1f} M records/s")
