"""atheris harness for the Kafka request decoder: any bytes must parse or raise
MalformedRequestError (no IndexError, struct.error, UnicodeDecodeError, MemoryError ...).

    python tests/fuzz/fuzz_requests.py -runs=100000 CORPUS_DIR

Each input is tried twice: as a request frame without its size prefix, the way the server reads
it (header, then the body of the API and version the header names), and as a body for the
advertised request version picked by its first byte, so that every API is reached even by
inputs whose header names none. CI runs it for a bounded number of iterations, seeded with valid
frames of every API and version (tests/fuzz/test_fuzz_requests.py). Crashes found here belong in
tests/server/test_protocol.py as regression cases.
"""

import sys

import atheris

with atheris.instrument_imports():
    from kstore.server import protocol
    from kstore.server.protocol import MalformedRequestError

VERSIONS = protocol.supported_versions()
REQUESTS = [(key, v) for key, (lo, hi) in sorted(VERSIONS.items()) for v in range(lo, hi + 1)]


def one_input(data: bytes) -> None:
    try:
        h = protocol.parse_request_header(data)
        rng = VERSIONS.get(h.api_key)
        if rng is not None and rng[0] <= h.api_version <= rng[1]:
            assert h.body_offset <= len(data)
            protocol.decode(h.api_key, False, h.api_version, data, h.body_offset)
    except MalformedRequestError:
        pass
    if data:
        key, version = REQUESTS[data[0] % len(REQUESTS)]
        try:
            protocol.decode(key, False, version, memoryview(data)[1:])
        except MalformedRequestError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
