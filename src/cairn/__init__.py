"""cairn: event sourcing for Python, on Cassandra, PostgreSQL, SQLite or memory.

Aggregates publish their events in atomic batches with optimistic concurrency
control; events and snapshots can be encrypted (AES-GCM) and compressed.
Everything the documentation teaches is importable from here.
"""

from typing import TYPE_CHECKING

from cairn.application import (
    Application,
    Events,
    Repository,
    Snapshots,
    SnapshottingPolicy,
)
from cairn.crypto import AESCipher, DataKeys, KeyRing, cipher_from_env
from cairn.domain import Aggregate, DomainEvent, Entity, Retired, attribute
from cairn.errors import (
    AggregateDiscarded,
    AggregateForgotten,
    AggregateNotFound,
    AllOrNoneUnsupported,
    CairnError,
    ConcurrencyError,
    EncodingError,
    FenceNeedsKey,
    InvalidId,
    KeyExhausted,
    NoApplication,
    NoUpcastStep,
    OutcomeUnknown,
    ProcessStopped,
    ProjectionError,
    SchemaMismatch,
    StoreError,
    SubscriberError,
    TopicError,
    UnreadableRecord,
)
from cairn.feed import Feed
from cairn.mapping import JSONTranscoder, Mapper, Snapshot
from cairn.model import Model
from cairn.processes import (
    MultiprocessRunner,
    Process,
    SingleThreadedRunner,
    System,
    ThreadedRunner,
)
from cairn.projections import PostgresViews, Projection, ProjectionRunner, SQLiteViews, Views
from cairn.renamed import module_aliases
from cairn.stores import FeedPage, Record, Store, open_store

__all__ = [
    "AESCipher",
    "Aggregate",
    "AggregateDiscarded",
    "AggregateForgotten",
    "AggregateNotFound",
    "AllOrNoneUnsupported",
    "Application",
    "CairnError",
    "ConcurrencyError",
    "DataKeys",
    "DomainEvent",
    "EncodingError",
    "Entity",
    "Events",
    "Feed",
    "FeedPage",
    "FenceNeedsKey",
    "InvalidId",
    "JSONTranscoder",
    "KeyExhausted",
    "KeyRing",
    "Mapper",
    "Model",
    "MultiprocessRunner",
    "NoApplication",
    "NoUpcastStep",
    "OutcomeUnknown",
    "PostgresViews",
    "Process",
    "ProcessStopped",
    "Projection",
    "ProjectionError",
    "ProjectionRunner",
    "Record",
    "Repository",
    "Retired",
    "SQLiteViews",
    "SchemaMismatch",
    "SingleThreadedRunner",
    "Snapshot",
    "Snapshots",
    "SnapshottingPolicy",
    "Store",
    "StoreError",
    "SubscriberError",
    "System",
    "ThreadedRunner",
    "TopicError",
    "UnreadableRecord",
    "Views",
    "attribute",
    "cipher_from_env",
    "open_store",
]

if TYPE_CHECKING:
    EventStore = Events
    IntegrityError = UnreadableRecord
    Recorder = Store
    SnapshotStore = Snapshots
else:
    __getattr__ = module_aliases(
        __name__,
        {
            "EventStore": "Events",
            "IntegrityError": "UnreadableRecord",
            "Recorder": "Store",
            "SnapshotStore": "Snapshots",
        },
        globals(),
    )
