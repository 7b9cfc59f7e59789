"""The partition log: Kafka's segment, index and checkpoint files, written and read by kstore."""

from kstore.log.fileslice import FileSlice
from kstore.log.partition import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    PartitionLog,
    RecoveryReport,
    SegmentInfo,
)

__all__ = [
    "EARLIEST_TIMESTAMP",
    "LATEST_TIMESTAMP",
    "FileSlice",
    "PartitionLog",
    "RecoveryReport",
    "SegmentInfo",
]
