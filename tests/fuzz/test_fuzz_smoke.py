"""Run the atheris decoder harness for a bounded number of inputs, seeded with valid batches
of every codec (with the CRC checks off inside the harness, mutations reach the records),
through .ci/fuzz (what `make fuzz` runs): the compiled core built with clang's libFuzzer
coverage counters and ASan, so the fuzzer is guided by the C code it exercises."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kstore.records import CODECS, BatchBuilder

from ..conftest import VECTORS

pytest.importorskip("atheris", reason="atheris is not installed: it comes with the [test] "
                                      "extra on x86_64 (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parent.parent.parent
RUNS = int(os.environ.get("KSTORE_FUZZ_RUNS", "10000"))


@pytest.mark.slow
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
    if shutil.which("clang") is None:
        pytest.skip("clang is not installed (apt-get install clang): the coverage build of the "
                    "compiled core needs it")
    proc = subprocess.run(
        ["bash", str(ROOT / ".ci" / "fuzz"), f"-runs={RUNS}", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Done" in proc.stderr, proc.stderr[-2000:]
    # libFuzzer saw the C code's coverage counters (without them it finds "no interesting inputs")
    counters = re.search(r"Loaded \d+ modules\s+\((\d+) inline 8-bit counters\)", proc.stderr)
    assert counters and int(counters.group(1)) > 5000, proc.stderr[-3000:]
    assert "no interesting inputs" not in proc.stderr
