"""PartitionLog against a list of records, driven by hypothesis (pyroaring's
RuleBasedStateMachine against ``set``): append, append many, roll, truncate, delete the start,
reopen cleanly or after a simulated crash; every read matches the model."""

import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kstore.log import PartitionLog
from kstore.records import BatchBuilder

CONFIG = {"segment.bytes": 700, "index.interval.bytes": 64, "segment.index.bytes": 8 * 6,
          "file.delete.delay.ms": 0}

values = st.lists(st.one_of(st.none(), st.binary(max_size=60)), min_size=1, max_size=6)


def _die(log):
    """As if the process died: no flush, no marker, no index persisted; its descriptors go
    (leaving them open leaked thousands over a run)."""
    log._release()
    log._closed = True
    for seg in log._segments:
        if seg._wfd >= 0:
            os.close(seg._wfd)
            seg._wfd = -1
        seg.offset_index.close()
        seg.time_index.close()
        seg.close_files()


class LogMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.dir = self.tmp / "m-0"
        self.log = PartitionLog.open(self.dir, CONFIG)
        self.model: list[tuple[int, bytes | None, int]] = []  # (offset, value, timestamp)
        self.start = 0
        self.leo = 0
        self.ts = 1_000

    def teardown(self):
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _build(self, vals):
        b = BatchBuilder()
        for v in vals:
            self.ts += 1
            b.append(v, key=b"k", timestamp=self.ts)
        return b.build(), [self.ts - len(vals) + 1 + i for i in range(len(vals))]

    @rule(vals=values)
    def append(self, vals):
        raw, stamps = self._build(vals)
        first, last, _ = self.log.append_batch(raw)
        assert first == self.leo
        assert last == first + len(vals) - 1
        self.model += [(first + i, v, stamps[i]) for i, v in enumerate(vals)]
        self.leo = last + 1

    @rule(batches=st.lists(values, min_size=1, max_size=4))
    def append_many(self, batches):
        raws, expect = [], []
        for vals in batches:
            raw, stamps = self._build(vals)
            raws.append(raw)
            expect.append((vals, stamps))
        first, last, _ = self.log.append_batches(b"".join(raws))
        assert first == self.leo
        off = first
        for vals, stamps in expect:
            self.model += [(off + i, v, stamps[i]) for i, v in enumerate(vals)]
            off += len(vals)
        assert last == off - 1
        self.leo = off

    @rule()
    def roll(self):
        self.log.roll()

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def truncate(self, data):
        # truncate_to keeps a batch that starts below the target: cut at a batch start
        starts = self.batch_starts()
        target = data.draw(st.sampled_from(starts))
        if target < self.start:
            return
        self.log.truncate_to(target)
        self.model = [m for m in self.model if m[0] < target]
        self.leo = min(self.leo, target)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def delete_start(self, data):
        target = data.draw(st.integers(self.start, self.leo))
        self.log.delete_segments_before(target)
        self.start = max(self.start, target)

    @rule()
    def reopen_clean(self):
        self.log.close()
        self.log = PartitionLog.open(self.dir, CONFIG)
        assert self.log.recovery.clean

    @rule()
    def reopen_after_crash(self):
        _die(self.log)
        self.log = PartitionLog.open(self.dir, CONFIG)
        assert not self.log.recovery.clean
        assert self.log.recovery.truncated_bytes == 0

    def batch_starts(self):
        out = []
        for b in self.log.read(self.log.log_start_offset, 1 << 30).batches():
            out.append(b.base_offset)
        starts = [s for s in out]
        for seg in self.log.segments()[1:]:
            for b in self.log.read(max(seg.base_offset, self.start), 1 << 30).batches():
                starts.append(b.base_offset)
        return sorted(set(starts)) or [self.log.log_end_offset]

    @invariant()
    def reads_match_model(self):
        assert self.log.log_end_offset == self.leo
        assert self.log.log_start_offset == max(self.start, self.log.segments()[0].base_offset)
        visible = [m for m in self.model if m[0] >= self.log.log_start_offset]
        got = []
        off = self.log.log_start_offset
        while off < self.log.log_end_offset:
            recs = [r for r in self.log.read_records(off, max_bytes=1 << 20)]
            assert recs, off
            got += recs
            off = recs[-1].offset + 1
        assert [(r.offset, r.value, r.timestamp) for r in got] == visible


LogMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPartitionLogStateMachine = LogMachine.TestCase
