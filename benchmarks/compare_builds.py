"""Compare single-process append throughput of several kstore builds (or open modes) in one
session, interleaved round by round (A B C A B C ...), so that load from other jobs on the
machine falls on all of them alike. A pytest benchmark cannot import two kstore builds, so
this is a script run by hand:

    python benchmarks/compare_builds.py --rounds 5 \\
        today=/work/wt/today/.venv/bin/python \\
        exclusive=.venv/bin/python:exclusive shared=.venv/bin/python:shared

Each variant is ``label=python[:exclusive|:shared]``; without a mode ``kstore.open(path)`` is
called with no mode argument (what a build before issue 14 accepts). Every round of every
variant is a fresh interpreter and a fresh data directory: one 4-partition topic, values of 100
bytes (JSON-like, keyless), and either ``send_many`` in calls of 65,536 records (default) or
``--workload send``: ``Producer.send`` per record then ``flush``. Only the append loop is timed.
Prints each variant's min / median / max records/s and the ratio of medians to the first one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WORKER = r"""
import os, shutil, sys, tempfile, time
import numpy as np
import kstore
workload, mode, records, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, sys.argv[5])
from values import make_values
CALL = 65536 if workload == "send_many" else 4096
vals = make_values(min(CALL, records))
arr = np.frombuffer(b"".join(vals), dtype=np.uint8).reshape(len(vals), 100)
kw = {} if mode == "default" else {"exclusive": mode == "exclusive"}
d = tempfile.mkdtemp(prefix="kstore-cmp-", dir=root)
try:
    with kstore.open(d, retention_check_interval_ms=0, **kw) as s:
        s.create_topic("t", 4, {"segment.bytes": 1 << 30})
        p = s.producer()
        if workload == "send_many":
            p.send_many("t", arr[:100])
            calls = max(records // len(arr), 1)
            t0 = time.perf_counter()
            for _ in range(calls):
                p.send_many("t", arr)
            el = time.perf_counter() - t0
            n = calls * len(arr)
        else:
            p.send("t", vals[0]); p.flush()
            t0 = time.perf_counter()
            send = p.send
            for i in range(records):
                send("t", vals[i % len(vals)])
            p.flush()
            el = time.perf_counter() - t0
            n = records
        total = sum(s.partition("t", i).log_end_offset for i in range(4))
        assert total == n + (100 if workload == "send_many" else 1), total
    print(n / el)
finally:
    shutil.rmtree(d, ignore_errors=True)
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="label=python[:exclusive|:shared]")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--workload", choices=["send_many", "send"], default="send_many")
    ap.add_argument("--dir", default=".", help="where the temporary data directories go")
    a = ap.parse_args(argv)
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    root = os.path.abspath(a.dir)
    variants = []
    for v in a.variants:
        label, _, rest = v.partition("=")
        py, _, mode = rest.partition(":")
        py = os.path.abspath(py) if os.sep in py else py
        variants.append((label, py, mode or "default"))
    rates: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    for r in range(a.rounds):
        for label, py, mode in variants:
            out = subprocess.run([py, "-c", WORKER, a.workload, mode, str(a.records), root,
                                  bench_dir], check=False, capture_output=True, text=True,
                                 cwd="/")
            if out.returncode != 0:
                sys.exit(f"{label} ({py}) failed:\n{out.stderr[-3000:]}")
            rates[label].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {label}: {rates[label][-1]:,.0f} records/s", flush=True)
    base = statistics.median(rates[variants[0][0]])
    print(f"\n{a.workload}, {a.records:,} records, 1 process, {a.rounds} interleaved rounds")
    print("| variant | min rec/s | median rec/s | max rec/s | median / first |")
    print("|---|---:|---:|---:|---:|")
    for label, _, _ in variants:
        xs = rates[label]
        print(f"| {label} | {min(xs):,.0f} | {statistics.median(xs):,.0f} | {max(xs):,.0f} | "
              f"{statistics.median(xs) / base:.3f} |")


if __name__ == "__main__":
    main()
