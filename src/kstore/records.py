"""Kafka RecordBatch v2 codec: build batches, iterate them, decode records or columns.

Everything here is implemented in the compiled core (``kstore._core``); this module is the
public name for it. Example::

    from kstore.records import BatchBuilder, iter_batches

    b = BatchBuilder(compression="lz4")
    b.append(b"value", key=b"key", headers=[("h", b"v")], timestamp=1700000000000)
    raw = b.build()
    for batch in iter_batches(raw):
        batch.validate()
        for record in batch.records():
            print(record.offset, record.key, record.value)
"""

from kstore._core import (
    CODECS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    HEADER_SIZE,
    LOG_OVERHEAD,
    TIMESTAMP_CREATE,
    TIMESTAMP_LOG_APPEND,
    Batch,
    BatchBuilder,
    Columns,
    Record,
    ScanResult,
    codec_id,
    columns,
    crc32c,
    encode_batches,
    iter_batches,
    murmur2,
    murmur2_partition,
    read_batch,
    scan,
    validate_all,
)

__all__ = [
    "CODECS",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_DECOMPRESSED_BYTES",
    "HEADER_SIZE",
    "LOG_OVERHEAD",
    "TIMESTAMP_CREATE",
    "TIMESTAMP_LOG_APPEND",
    "Batch",
    "BatchBuilder",
    "Columns",
    "Record",
    "ScanResult",
    "codec_id",
    "columns",
    "crc32c",
    "encode_batches",
    "iter_batches",
    "murmur2",
    "murmur2_partition",
    "read_batch",
    "scan",
    "validate_all",
]
