"""Run the atheris request-decoder harness for a bounded number of inputs, seeded with a valid
frame of every advertised request version (and the same bodies in the harness's
"selector byte + body" form), so mutations start inside real messages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kstore.server import protocol

from ..server.protocol_values import VARIANTS, all_messages, make_value

pytest.importorskip("atheris", reason="atheris is not installed: it comes with the [test] "
                                      "extra on x86_64 (pip install -e '.[test]')")

HARNESS = Path(__file__).with_name("fuzz_requests.py")
RUNS = int(os.environ.get("KSTORE_FUZZ_RUNS", "30000"))


@pytest.mark.slow
def test_request_decoder_survives_fuzzing(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    requests = [m for m in all_messages() if not m[1]]
    for i, (key, _, version) in enumerate(requests):
        for variant in (VARIANTS[0], VARIANTS[1]):
            value = make_value(key, False, version, variant)
            frame = protocol.encode_request(key, version, i, value, client_id="fuzz")
            (corpus / f"{key}-{version}-{variant.name}.frame").write_bytes(frame[4:])
            body = protocol.encode_bytes(key, False, version, value)
            (corpus / f"{key}-{version}-{variant.name}.body").write_bytes(bytes([i]) + body)
    proc = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={RUNS}", "-max_len=2048", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Done" in proc.stderr, proc.stderr[-2000:]
