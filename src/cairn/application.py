"""Applications: a store, a mapper, a repository, snapshots, and the bus that carries saved batches.

Write path: ``app.save(*aggregates)`` maps every pending event to a record,
appends them as one atomic batch, and only then hands the batch to the
subscribers (the snapshotting policy, projections). Read path: the newest
snapshot at or below the wanted version, then the events after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, cast
from uuid import UUID

from cairn.crypto import Cipher, DataKeys
from cairn.domain import Aggregate, DomainEvent, open_applications, topic_of
from cairn.errors import (
    AggregateNotFound,
    ConcurrencyError,
    NoUpcastStep,
    SubscriberError,
    UnreadableRecord,
)
from cairn.feed import Feed, explained
from cairn.mapping import MAX_PAYLOAD, Mapper, Snapshot
from cairn.model import Declared, Model
from cairn.renamed import Alias, module_aliases
from cairn.stores import Store, aggregate_id, open_store

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)
Subscriber = Callable[[Sequence[DomainEvent]], None]


class Events:
    """Domain events in, domain events out, over one store (formerly ``EventStore``)."""

    recorder: Alias[Store] = Alias("store")  # deprecated: the old name of ``store``

    def __init__(self, store: Store, mapper: Mapper) -> None:
        self.store = store
        self.mapper = mapper

    def put(self, events: Sequence[DomainEvent], *, all_or_none: bool = True) -> None:
        """Store a batch atomically (every event is mapped before anything is written);
        ``all_or_none`` as :meth:`Application.save` says."""
        self.store.append([self.mapper.to_record(e) for e in events], all_or_none=all_or_none)

    def get(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Iterator[DomainEvent]:
        """One aggregate's events in version order, decoded as they stream in."""
        to_event = self.mapper.to_event
        pages = self.store.select_pages(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        try:
            try:
                # Page by page, as the store's rows: replay decodes every event ever stored.
                for page in pages:
                    for record in page:
                        yield to_event(record)
            finally:
                # Stopped early, failed or done, the store's read ahead is let go here:
                # before explaining an unreadable record, which reads the store again.
                pages.close()
        except UnreadableRecord as exc:
            raise explained(exc, self.mapper, self.store, originator_id) from None


class Snapshots:
    """Snapshots of aggregates' state (the seed's ``snapshot_strategy``; formerly
    ``SnapshotStore``)."""

    recorder: Alias[Store] = Alias("store")  # deprecated: the old name of ``store``

    def __init__(self, store: Store, mapper: Mapper) -> None:
        self.store = store
        self.mapper = mapper

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Snapshot | None:
        """The newest snapshot taken at or below event version ``lte``, or None."""
        record = self.store.get_snapshot(aggregate_id(originator_id), lte=lte)
        try:
            return None if record is None else self.mapper.to_snapshot(record)
        except UnreadableRecord as exc:
            raise explained(exc, self.mapper, self.store, originator_id) from None

    def put_snapshot(self, snapshot: Snapshot) -> None:
        self.store.put_snapshot(self.mapper.snapshot_to_record(snapshot))


class Repository(Generic[A]):
    """Aggregates by id, rebuilt from the newest snapshot and the events after it."""

    def __init__(self, application: Application) -> None:
        self.application = application
        self.events = application.events
        self.snapshots = application.snapshots

    def __getitem__(self, originator_id: UUID) -> A:
        return self.get(originator_id)

    def __contains__(self, originator_id: object) -> bool:
        if not isinstance(originator_id, UUID):
            return False
        try:
            self.get(originator_id)
        except AggregateNotFound:
            return False
        return True

    def get(self, originator_id: UUID, lte: int | None = None) -> A:
        """The aggregate as it is now, or as it was after event version ``lte``.

        Events are numbered from 0 and ``aggregate.version`` counts them, so
        ``get(id, lte=3).version == 4``.

        :class:`~cairn.AggregateNotFound` (a ``KeyError``) if it has no events
        at or below ``lte``, or was discarded by then. :class:`~cairn.InvalidId` if
        ``originator_id`` is not a UUID.
        """
        aggregate = self._rebuild(aggregate_id(originator_id), lte)
        if aggregate is None:
            at = "" if lte is None else f" at version {lte}"
            raise AggregateNotFound(f"aggregate {originator_id} not found{at}")
        if aggregate._is_discarded:
            raise AggregateNotFound(
                f"aggregate {originator_id} was discarded at version {aggregate._version - 1}"
            )
        aggregate._application = self.application
        return aggregate

    get_entity = get  # the seed's name

    def take_snapshot(self, originator_id: UUID, lte: int | None = None) -> Snapshot:
        """Store a snapshot of the aggregate after event version ``lte`` (default: the latest)."""
        aggregate = self._rebuild(aggregate_id(originator_id), lte)
        if aggregate is None:
            raise AggregateNotFound(f"aggregate {originator_id} has no events to snapshot")
        snapshot = snapshot_of(aggregate)
        self.snapshots.put_snapshot(snapshot)
        return snapshot

    def _rebuild(self, originator_id: UUID, lte: int | None) -> A | None:
        aggregate: Any = None
        gt = None
        try:
            snapshot = self.snapshots.get_snapshot(originator_id, lte=lte)
        except NoUpcastStep:
            # Of a form the code has no upcast step from (the aggregate's state changed,
            # and its snapshots are not upcast): the events say the same, from the start.
            snapshot = None
        if snapshot is not None:
            if snapshot.state is None:
                # Discarded by then: rebuild from events so the caller sees how far it got.
                snapshot = None
            else:
                aggregate = aggregate_from_snapshot(snapshot, self.application.model)
                gt = snapshot.originator_version
        for event in self.events.get(originator_id, gt=gt, lte=lte):
            aggregate = event.mutate(aggregate)
        return cast("A | None", aggregate)


def state_of(aggregate: Aggregate) -> dict[str, Any]:
    """The aggregate's attributes, as a snapshot stores them (no pending events)."""
    transient = aggregate._transient
    return {k: v for k, v in vars(aggregate).items() if k not in transient}


def snapshot_of(aggregate: Aggregate) -> Snapshot:
    """A snapshot of the aggregate after its last applied event (state None once discarded)."""
    state = None if aggregate._is_discarded else state_of(aggregate)
    return Snapshot(aggregate._id, aggregate._version - 1, topic_of(type(aggregate)), state)


def aggregate_from_snapshot(snapshot: Snapshot, model: Model) -> Any:
    """Rebuild an aggregate object from a snapshot's state (its class one of the model's)."""
    cls = model.aggregate_class(snapshot.topic)
    aggregate = object.__new__(cls)
    aggregate.__dict__.update(snapshot.state or {})
    aggregate._pending_events = []
    aggregate._application = None
    return aggregate


class SnapshottingPolicy:
    """Snapshots an aggregate every ``period`` events: after each event whose
    version + 1 is a multiple of the period, however the events were batched.
    """

    def __init__(self, repository: Repository[Any], period: int) -> None:
        if period < 1:
            raise ValueError(f"snapshot period must be at least 1, not {period}")
        self.repository = repository
        self.period = period

    def trigger(self, event: DomainEvent) -> bool:
        return (event.originator_version + 1) % self.period == 0

    def __call__(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            if self.trigger(event):
                self.repository.take_snapshot(event.originator_id, lte=event.originator_version)


class Application:
    """An event-sourced application over one store.

    ``store`` is a store URL (else ``$CAIRN_STORE``, else a SQLite file in the
    working folder) or an open :class:`~cairn.stores.Store`. ``cipher`` encrypts
    every event and snapshot, and then only what it sealed is read
    (``always_encrypt`` is implied; False is refused: encrypt a plaintext store
    with ``cairn rotate-key`` first); ``compress`` zlib-compresses payloads;
    ``snapshot_every`` takes a snapshot every N events; ``key_per_aggregate``
    encrypts each aggregate with a data key of its own, wrapped by ``cipher``,
    so that :meth:`forget` can shred one. ``model`` declares classes, modules
    or packages (by name: imported once, here) whose enums and value objects
    stored data may build, beyond those defined beside the aggregate, event and
    entity classes (see :class:`~cairn.model.Model`); ``renames`` maps topics
    that records were stored under to the classes that read them now, beside
    the classes' own ``former_topics`` (``docs/evolution.md``); ``max_payload``
    bounds one record's payload, in bytes. Use it as a context manager: inside ``with
    app:`` new aggregates are saved by ``aggregate.save()``.
    """

    recorder: Alias[Store] = Alias("store")  # deprecated: the old name of ``store``

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        cipher: Cipher | None = None,
        always_encrypt: bool | None = None,
        compress: bool = False,
        snapshot_every: int | None = None,
        key_per_aggregate: bool = False,
        model: Model | Iterable[Declared] | None = None,
        renames: Mapping[str, type] | None = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        if key_per_aggregate and cipher is None:
            raise ValueError(
                "key_per_aggregate=True needs a cipher: the master key that wraps them"
            )
        Mapper.check_options(cipher, always_encrypt, max_payload)  # before a store is opened
        self.model = Model.of(model, renames)
        self._owns_store = not isinstance(store, Store)  # close only what it opened
        self.store = store if isinstance(store, Store) else open_store(store)
        data_keys = DataKeys(cipher, self.store) if key_per_aggregate and cipher else None
        self.mapper = Mapper(
            cipher=cipher,
            compress=compress,
            always_encrypt=always_encrypt,
            data_keys=data_keys,
            model=self.model,
            max_payload=max_payload,
        )
        # The fences the store's feed writes (Cassandra's) are sealed under the key, so
        # that the application reads them and refuses a keyless writer's forgery.
        self._fences_found = self.store.fences
        self.store.fences = self.mapper.fences
        self.events = Events(self.store, self.mapper)
        self.snapshots = Snapshots(self.store, self.mapper)
        self.feed = Feed(self.store, self.mapper)
        self.repository: Repository[Any] = Repository(self)
        self._subscribers: list[Subscriber] = []
        self._tokens: list[Token[tuple[Any, ...]]] = []
        if snapshot_every is not None:
            self.subscribe(SnapshottingPolicy(self.repository, snapshot_every))

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(events)`` with every batch, once it is stored."""
        self._subscribers.append(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.remove(subscriber)

    def save(self, *aggregates: Aggregate, all_or_none: bool = True) -> None:
        """Store the pending events of these aggregates as one atomic batch: all or none.

        Cassandra cannot store several aggregates all or none (it has no
        multi-partition transactions): there, a save of more than one aggregate
        raises :class:`~cairn.AllOrNoneUnsupported` and writes nothing. Save each
        aggregate on its own, or make the change a process application
        (``docs/processes.md``), or pass ``all_or_none=False``: each aggregate's
        batch is then stored all or none on its own (all sent at once), and a
        :class:`~cairn.ConcurrencyError` lists in ``stored`` the aggregates that
        were stored. SQLite, PostgreSQL and memory take ``all_or_none=False`` and
        stay all or none.
        """
        pending = [(a, a.collect_events()) for a in aggregates]
        events = [e for _, batch in pending for e in batch]
        if not events:
            return
        if all_or_none and not self.store.atomic_across_aggregates:
            # Before the events are mapped: mapping may store a new aggregate's data key.
            self.store.check_all_or_none(list(dict.fromkeys(a.id for a, batch in pending if batch)))
        try:
            self.events.put(events, all_or_none=all_or_none)
        except ConcurrencyError as exc:
            self._stored([(a, b) for a, b in pending if a.id in exc.stored])
            raise
        self._stored(pending)

    def _stored(self, saved: Sequence[tuple[Aggregate, Sequence[DomainEvent]]]) -> None:
        for aggregate, batch in saved:
            del aggregate._pending_events[: len(batch)]
            aggregate._application = self
        events = [e for _, batch in saved for e in batch]
        if events:
            self._publish(events)

    def _publish(self, events: Sequence[DomainEvent]) -> None:
        failures = []
        for subscriber in list(self._subscribers):
            try:
                subscriber(events)
            except Exception as exc:
                log.exception("subscriber %r failed on a stored batch", subscriber)
                failures.append((subscriber, exc))
        if failures:
            failed, error = failures[0]
            first = events[0]
            raise SubscriberError(
                f"the batch of aggregate {first.originator_id} from version "
                f"{first.originator_version} was stored, but subscriber {failed!r} failed: {error!r}"
            ) from error

    def forget(self, originator_id: UUID) -> None:
        """Crypto-shred an aggregate: destroy its data key, so that its events and snapshots
        can no longer be read by anyone (the master key included). Needs
        ``key_per_aggregate=True``. The aggregate's versions stay, and the feed keeps its
        positions; reading the aggregate raises :class:`~cairn.AggregateForgotten`.
        Refused (ValueError) for an aggregate with no data key of its own, such as one
        created before ``key_per_aggregate`` was on, which the master key still reads."""
        if self.mapper.data_keys is None:
            raise ValueError(
                "forget() needs an application with key_per_aggregate=True: "
                "with one key for all aggregates, no one aggregate can be shredded"
            )
        self.mapper.data_keys.forget(aggregate_id(originator_id))

    def close(self) -> None:
        """Close the store's connections (unless the store was opened by someone else:
        then give it back the fences it had)."""
        if self._owns_store:
            self.store.close()
        else:
            self.store.fences = self._fences_found

    def __enter__(self) -> Self:
        self._tokens.append(open_applications.set((*open_applications.get(), self)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        open_applications.reset(self._tokens.pop())
        self.close()


if TYPE_CHECKING:
    EventStore = Events
    SnapshotStore = Snapshots
else:
    __getattr__ = module_aliases(
        __name__, {"EventStore": "Events", "SnapshotStore": "Snapshots"}, globals()
    )
