"""cairn: event sourcing for Python, on Cassandra, PostgreSQL, SQLite or memory.

Aggregates publish their events in atomic batches with optimistic concurrency
control; events and snapshots can be encrypted (AES-GCM) and compressed.
"""

from cairn.application import (
    Application,
    EventStore,
    Feed,
    Repository,
    SnapshotStore,
    SnapshottingPolicy,
)
from cairn.crypto import AESCipher, KeyRing
from cairn.domain import Aggregate, DomainEvent, Entity, attribute
from cairn.errors import (
    AggregateDiscarded,
    AggregateForgotten,
    AggregateNotFound,
    CairnError,
    ConcurrencyError,
    EncodingError,
    IntegrityError,
    NoApplication,
    OutcomeUnknown,
    StoreError,
    SubscriberError,
    TopicError,
)
from cairn.mapping import JSONTranscoder, Mapper, Snapshot
from cairn.model import Model
from cairn.stores import Record, Recorder, open_store

__all__ = [
    "AESCipher",
    "Aggregate",
    "AggregateDiscarded",
    "AggregateForgotten",
    "AggregateNotFound",
    "Application",
    "CairnError",
    "ConcurrencyError",
    "DomainEvent",
    "EncodingError",
    "Entity",
    "EventStore",
    "Feed",
    "IntegrityError",
    "JSONTranscoder",
    "KeyRing",
    "Mapper",
    "Model",
    "NoApplication",
    "OutcomeUnknown",
    "Record",
    "Recorder",
    "Repository",
    "Snapshot",
    "SnapshotStore",
    "SnapshottingPolicy",
    "StoreError",
    "SubscriberError",
    "TopicError",
    "attribute",
    "open_store",
]
