"""atheris harness for the batch decoder: any bytes must decode or raise a kstore error.

    python tests/fuzz/fuzz_decoder.py -runs=100000 CORPUS_DIR

CI runs it for a bounded number of iterations (tests/fuzz/test_fuzz_smoke.py). Crashes found
here join tests/vectors/ as regression inputs.
"""

import sys

import atheris

with atheris.instrument_imports(enable_loader_override=False):
    from kstore import errors
    from kstore.records import columns, iter_batches, scan

LIMIT = 1 << 20


def one_input(data: bytes) -> None:
    try:
        for batch in iter_batches(data, allow_partial=True):
            batch.validate()
            batch.records(check_crc=False, max_decompressed_bytes=LIMIT)
            batch.columns(check_crc=False, max_decompressed_bytes=LIMIT)
    except errors.KStoreError:
        pass
    try:
        columns(data, check_crc=False, max_decompressed_bytes=LIMIT)
    except errors.KStoreError:
        pass
    res = scan(data, check_crc=False)
    assert res.valid_end <= len(data)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
