"""Run the atheris decoder harness for a bounded number of inputs, seeded with valid batches
of every codec (with the CRC checks off inside the harness, mutations reach the records)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kstore.records import CODECS, BatchBuilder

from ..conftest import VECTORS

pytest.importorskip("atheris", reason="atheris is not installed: it comes with the [test] "
                                      "extra on x86_64 (pip install -e '.[test]')")

HARNESS = Path(__file__).with_name("fuzz_decoder.py")
RUNS = int(os.environ.get("KSTORE_FUZZ_RUNS", "30000"))


def test_decoder_survives_fuzzing(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for codec in CODECS:
        b = BatchBuilder(compression=codec)
        for i in range(6):
            b.append(b"value-%d" % i, key=b"k%d" % i if i % 2 else None,
                     headers=[("h", b"x"), ("n", None)][: i % 3], timestamp=1000 + i)
        (corpus / f"{codec}.bin").write_bytes(b.build())
    if VECTORS.exists():
        for p in sorted(VECTORS.glob("*.bin"))[:20]:
            (corpus / p.name).write_bytes(p.read_bytes())
    regress = Path(__file__).parent.parent / "vectors"
    for p in regress.glob("*.bin"):
        (corpus / p.name).write_bytes(p.read_bytes())
    proc = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={RUNS}", "-max_len=4096", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Done" in proc.stderr, proc.stderr[-2000:]
