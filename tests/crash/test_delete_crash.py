"""A crash in the middle of deleting segments (retention, delete_records) loses nothing that
should be kept: the child is SIGKILLed after some of the renames to *.deleted."""

import os
import subprocess
import sys

import pytest

from kstore.log import PartitionLog
from kstore.records import BatchBuilder

CHILD = r"""
import os, signal, sys
from kstore.log import PartitionLog
from kstore.log import segment as segmod
kill_after = int(sys.argv[2])
done = [0]
orig = segmod.Segment.rename_deleted
def dying(self):
    if done[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    out = orig(self)
    done[0] += 1
    return out
segmod.Segment.rename_deleted = dying
lg = PartitionLog.open(sys.argv[1], {"segment.bytes": 1500, "file.delete.delay.ms": 600000})
lg.delete_segments_before(int(sys.argv[3]))
print("finished", flush=True)
"""


def _fill(d):
    with PartitionLog.open(d, {"segment.bytes": 1500}) as lg:
        for i in range(60):
            b = BatchBuilder()
            for j in range(5):
                b.append(b"v%d" % (i * 5 + j) + b"x" * 30, key=b"k", timestamp=1000)
            lg.append_batch(b.build())
        return [s.base_offset for s in lg.segments()], lg.log_end_offset


@pytest.mark.parametrize("kill_after", [0, 1, 3])
def test_kill_during_segment_deletion(tmp_path, kill_after):
    d = tmp_path / "t-0"
    bases, end = _fill(d)
    target = bases[5] + 2  # six segments go, the start moves inside the seventh
    proc = subprocess.run([sys.executable, "-c", CHILD, str(d), str(kill_after), str(target)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr  # it really died mid-way
    with PartitionLog.open(d) as lg:
        assert not lg.recovery.clean
        # Every record at or above the requested start is there, in order; nothing is torn.
        assert lg.log_start_offset <= target
        assert lg.log_end_offset == end
        got = [r.offset for r in lg.read_records(target, 1 << 20)]
        off = target
        while off < end:
            recs = lg.read_records(off, 1 << 20)
            assert recs and recs[0].offset == off
            off = recs[-1].offset + 1
        assert got[0] == target
        assert lg.verify() == []
        assert not [n for n in os.listdir(d) if n.endswith(".deleted")]  # leftovers removed
        # Finishing the deletion afterwards works.
        lg.delete_segments_before(target)
        assert lg.log_start_offset == target
