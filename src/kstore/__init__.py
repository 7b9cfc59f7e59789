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

from kstore import errors
from kstore.errors import KStoreError
from kstore.records import BatchBuilder, Record, iter_batches
from kstore.cluster import ClusterStore, connect
from kstore.store import Store, open

__version__ = "0.1.0"

__all__ = ["BatchBuilder", "ClusterStore", "KStoreError", "Record", "Store", "connect", "errors",
           "iter_batches", "open", "__version__"]
