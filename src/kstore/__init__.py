"""kstore: a Kafka-compatible log storage engine for Python with a compiled core.

    import kstore
    with kstore.open("./kstore-data") as store:
        store.create_topic("clicks", partitions=4)
        producer = store.producer()
        producer.send("clicks", b"value", key=b"user-1")
        producer.flush()
        consumer = store.consumer(group="etl", topics=["clicks"], auto_offset_reset="earliest")
        for record in consumer.poll(timeout=1.0):
            print(record.partition, record.offset, record.value)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kstore import errors
from kstore.errors import KStoreError

if TYPE_CHECKING:
    from kstore.cluster import ClusterStore, connect
    from kstore.records import BatchBuilder, Record, iter_batches
    from kstore.store import Store, open

__version__ = "0.1.0"

__all__ = ["BatchBuilder", "ClusterStore", "KStoreError", "Record", "Store", "connect", "errors",
           "iter_batches", "open", "__version__"]

# The compiled core and numpy are imported on first use, not by `import kstore`: pytest loads
# kstore.pytest_plugin (and so this package) into every test run where kstore is installed,
# and a run that uses no Kafka fixture should not pay ~0.3 s for them.
_LAZY = {"BatchBuilder": "kstore.records", "Record": "kstore.records",
         "iter_batches": "kstore.records", "Store": "kstore.store", "open": "kstore.store",
         "ClusterStore": "kstore.cluster", "connect": "kstore.cluster"}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is not None:
        value = getattr(importlib.import_module(where), name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(f"module 'kstore' has no attribute {name!r}")
    # `import kstore` then `kstore.store...`: submodules the eager imports used to load.
    try:
        return importlib.import_module(f"kstore.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"kstore.{name}":
            raise
        raise AttributeError(f"module 'kstore' has no attribute {name!r}") from None
