"""kstore: a Kafka-compatible log storage engine for Python with a compiled core."""

from kstore import errors
from kstore.errors import KStoreError
from kstore.records import BatchBuilder, Record, iter_batches

__version__ = "0.1.0"

__all__ = ["BatchBuilder", "KStoreError", "Record", "errors", "iter_batches", "__version__"]
