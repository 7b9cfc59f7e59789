"""Rebalance time of a cross-process consumer group (kstore.localgroups) after a SIGKILL.

Three member processes share a 4-partition topic; each follows the group and holds the claim
locks of its partitions (as a Consumer does while it reads). One is SIGKILLed; the time is
from just before the kill to the moment the state no longer names it and every partition's
claim is held again (by the survivors). Prints each run and the median.

    python tools/rebalance_time.py [--runs 9] [--session-timeout-ms 10000] [--stores]

--stores: the members are Consumers of kstore Stores (shared mode) waiting in poll() on an
idle topic, instead of bare GroupMembers.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path

from kstore import localgroups
from kstore.localgroups import GroupMember

COUNTS = {"t": 4}


def _member(data_dir: str, mid: str, session_ms: int, stop: "mp.synchronize.Event") -> None:
    m = GroupMember(data_dir, "bench", mid, COUNTS.__getitem__, session_timeout_ms=session_ms)
    m.join(["t"])
    while not stop.is_set():
        _, mine = m.refresh()
        m.release([tp for tp in list(m._claims) if tp not in mine])
        for tp in mine:
            m.claim(tp)
        # A consumer waiting for data wakes every check interval; one with data polls often.
        time.sleep(0.005)
    m.leave()


def _consumer(data_dir: str, mid: str, session_ms: int, stop: "mp.synchronize.Event") -> None:
    import kstore

    s = kstore.open(data_dir, retention_check_interval_ms=0)
    c = s.consumer(group="bench", topics=["t"], session_timeout_ms=session_ms)
    while not stop.is_set():
        c.poll(timeout=0.5)
    c.close()
    s.close()


def _all_claimed(d: Path) -> bool:
    return all(localgroups._lock_is_held(d / "claims" / f"t-{p}.claim") for p in range(4))


def one_run(session_ms: int, stores: bool) -> float:
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        if stores:
            import kstore

            with kstore.open(tmp, retention_check_interval_ms=0) as s:
                s.create_topic("t", partitions=4)
        stop = ctx.Event()
        procs = {mid: ctx.Process(target=_consumer if stores else _member,
                                  args=(tmp, mid, session_ms, stop), daemon=True)
                 for mid in ("a", "b", "c")}
        for p in procs.values():
            p.start()
        d = localgroups.group_dir(tmp, "bench")
        while not (len(localgroups.read_state(d)["members"]) == 3 and _all_claimed(d)):
            time.sleep(0.001)
        # Settled; kill at a random phase of the members' check interval (a fixed delay
        # would land just after their checks, which started together).
        time.sleep(0.2 + random.uniform(0, localgroups.check_interval(session_ms)))
        t0 = time.perf_counter()
        os.kill(procs["b"].pid, signal.SIGKILL)
        procs["b"].join()
        victim = procs["b"].pid

        def gone() -> bool:
            return all(i.get("pid") != victim
                       for i in localgroups.read_state(d)["members"].values())

        while not gone() or not _all_claimed(d):
            time.sleep(0.0005)
        took = time.perf_counter() - t0
        stop.set()
        for mid in ("a", "c"):
            procs[mid].join(10)
        return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--session-timeout-ms", type=int,
                    default=localgroups.DEFAULT_SESSION_TIMEOUT_MS)
    ap.add_argument("--stores", action="store_true")
    args = ap.parse_args()
    times = []
    for i in range(args.runs):
        t = one_run(args.session_timeout_ms, args.stores)
        times.append(t)
        print(f"run {i + 1}: {t * 1000:.1f} ms")
    print(f"{'Consumers of Stores' if args.stores else 'GroupMembers'}: "
          f"session_timeout_ms={args.session_timeout_ms} (check interval "
          f"{localgroups.check_interval(args.session_timeout_ms) * 1000:.0f} ms): median "
          f"{statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f}, "
          f"max {max(times) * 1000:.1f} over {len(times)} runs")


if __name__ == "__main__":
    main()
