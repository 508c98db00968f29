"""``CassandraStore``: the store contract on Cassandra, its methods in the order of every store's."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from typing import Any
from uuid import UUID

from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, Statement

from cairn.errors import ConcurrencyError, StoreError
from cairn.stores.cassandra import schema
from cairn.stores.cassandra.feed import INDEX_BITS, CassandraFeed
from cairn.stores.cassandra.outcomes import (
    DRIVER_ERRORS,
    column,
    describe,
    not_applied,
    not_stored,
    refusal,
    several_aggregates,
    size,
    stored_position,
    write_error,
)
from cairn.stores.cassandra.sequenced import SequencedFeed
from cairn.stores.cassandra.session import WRITE_PROFILE, Connection, connect, release
from cairn.stores.cassandra.settings import Settings, parse_url
from cairn.stores.cassandra.statements import prepare
from cairn.stores.cassandra.tracking import CassandraTracking
from cairn.stores.contract import (
    MAX_VERSION,
    Appended,
    FeedPage,
    Reacted,
    Record,
    RecordFields,
    Store,
    Tracking,
    aggregate_id,
    as_record,
    check_ids,
    filter_feed,
)
from cairn.stores.failures import DriverErrors, repeated

WRITES_IN_FLIGHT = 128  # a save's batches sent at once, at most: a larger save goes in waves
# Bytes a record adds to a request besides its topic and data: the statement's
# id, the uuid and bigint values and each value's length (a safe over-estimate).
RECORD_OVERHEAD = 64
BATCH_OVERHEAD = 256


class CassandraStore(Store):
    """A keyspace with an events table and a snapshots table, one partition per aggregate,
    and the feed's claims table (``feed``: the :class:`CassandraFeed`, None with feed=false).

    The driver's cluster connection is made once per process (a fresh one after
    fork) and shared by the process's threads. Appending records that are
    already stored, byte for byte, is not a conflict: a save repeated after
    :class:`~cairn.errors.OutcomeUnknown` is safe.
    """

    atomic_across_aggregates = False  # a conditional batch stays inside one partition

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.url
        self._lock = threading.Lock()
        self._errors = DriverErrors(self.url, DRIVER_ERRORS)
        cluster, session = connect(settings)
        try:
            schema.settled(lambda: schema.ensure_schema(cluster, session, settings))
            schema.settled(lambda: schema.check_replicas(session, settings))
            statements = schema.settled(lambda: self._prepare(session))
            self.max_batch_size = settings.max_batch_size or schema.server_write_limit(
                session, settings
            )
        except BaseException:
            cluster.shutdown()
            raise
        self._connection: Connection | None = Connection(cluster, session, statements, os.getpid())
        kind = SequencedFeed if settings.sequenced else CassandraFeed
        self.feed = kind(settings, self.connection, lambda: self.fences) if settings.feed else None
        self.tracking = CassandraTracking(self)

    @classmethod
    def from_url(cls, url: str) -> CassandraStore:
        return cls(parse_url(url))

    def connection(self) -> Connection:
        """The process's connection: its session and prepared statements (made anew in a
        forked child)."""
        connection = self._connection
        if connection is None or connection.pid != os.getpid():
            with self._lock:
                connection = self._connection
                if connection is None or connection.pid != os.getpid():
                    cluster, session = connect(self.settings)
                    connection = Connection(cluster, session, self._prepare(session), os.getpid())
                    self._connection = connection
        return connection

    def _prepare(self, session: Any) -> Any:
        with self._errors("cannot prepare the store's statements"):
            return prepare(session, self.settings.quoted_keyspace, self.settings.sequenced)

    # -- events

    def append(self, records: Sequence[Record], *, all_or_none: bool = True) -> Appended | None:
        """Store the batch as one conditional write on its aggregate's partition: whole or
        not at all. A batch of several aggregates cannot be all or none here: refused
        (AllOrNoneUnsupported) before anything is written, unless ``all_or_none=False``;
        then each aggregate's batch is one conditional write, sent together, in waves of
        WRITES_IN_FLIGHT (after one Paxos round claims their feed positions), and a
        refusal names the aggregates stored all the same. The records' feed positions
        (None with feed=false, and with feed=sequenced, whose sequencer gives them later);
        a batch found stored already, byte for byte, by an earlier save is not stored
        again: ``repeated`` names its aggregate (with feed=sequenced, in an Appended of no
        positions)."""
        check_ids(records)
        batches = _by_aggregate(records)
        if all_or_none and len(batches) > 1:
            self.check_all_or_none([b[0].originator_id for b in batches])
        for batch in batches:  # check every batch before writing any
            self._check(batch)
        # Claimed first, so that a claim is older than its events: a reader that
        # finds a claim's events missing knows they are in flight, or never coming.
        feed = self.feed
        # A claim's position, or (feed=sequenced) an intent, that the batch's rows carry.
        marks: list[Any] = feed.claim(batches) if feed is not None else [None] * len(batches)
        errors: list[ConcurrencyError | StoreError | None] = []
        stored_at: dict[int, int] = {}  # batch -> the position an earlier save stored it at
        for start in range(0, len(batches), WRITES_IN_FLIGHT):
            wave = range(start, min(start + WRITES_IN_FLIGHT, len(batches)))
            sent = [self._send(batches[i], marks[i]) for i in wave]
            errors += [
                self._outcome(batches[i], marks[i], f, partial(stored_at.__setitem__, i))
                for i, f in zip(wave, sent, strict=True)
            ]
        if feed is not None:
            feed.saved()
        failed = [(batch, e) for batch, e in zip(batches, errors, strict=True) if e is not None]
        if failed:
            error = refusal(self.url, batches, failed)
            raise error from error.__cause__ or failed[0][1].__cause__
        if feed is None or not feed.positions:
            # (feed=sequenced: the sequencer gives positions later; a repeat is still named)
            repeated = [batches[i][0].originator_id for i in stored_at]
            return Appended((), repeated) if repeated else None
        claimed = [stored_at.get(i, p) for i, p in enumerate(marks) if p is not None]
        repeated = [batches[i][0].originator_id for i in stored_at]
        return Appended(_positions(records, batches, claimed), repeated)

    def check_all_or_none(self, originator_ids: Collection[UUID]) -> None:
        if len(originator_ids) > 1:
            raise several_aggregates(self.url, originator_ids)

    def _check(self, batch: Sequence[Record]) -> None:
        """Refuse, before anything is sent, a batch that repeats a version or is too large."""
        seen: set[int] = set()
        for r in batch:
            if r.originator_version in seen:
                raise ConcurrencyError(repeated(r.originator_id, r.originator_version))
            seen.add(r.originator_version)
        if self.feed is not None:
            self.feed.check(batch)
        total = BATCH_OVERHEAD + sum(
            RECORD_OVERHEAD + len(r.topic.encode()) + len(r.data) for r in batch
        )
        if total > self.max_batch_size:
            raise StoreError(
                f"{self.url}: aggregate {batch[0].originator_id}: the batch of {len(batch)} "
                f"events is {size(total)}, over {self._limit_in_words()}. Nothing was written."
            )

    def _limit_in_words(self) -> str:
        limit = size(self.max_batch_size)
        if self.settings.max_batch_size:
            return f"the store URL's max_batch_size of {limit}; raise it in the URL"
        return (
            f"the {limit} a Cassandra node accepts in one write; raise "
            f"{' and '.join(schema.SIZE_SETTINGS)} in cassandra.yaml, or save fewer events "
            "at a time"
        )

    def _send(self, batch: Sequence[Record], mark: Any) -> Any:
        """The batch's conditional write, its rows carrying ``mark`` (the feed's), sent: its
        future, or the error that kept it from leaving (then it is not stored)."""
        statement = self._statement(batch, mark)
        try:
            return self.connection().session.execute_async(
                statement, execution_profile=WRITE_PROFILE
            )
        except DRIVER_ERRORS as exc:
            return exc

    def _outcome(
        self,
        batch: Sequence[Record],
        mark: Any,
        sent: Any,
        repeated: Callable[[int], object] | None = None,
    ) -> ConcurrencyError | StoreError | None:
        """None if the batch's conditional write stored it, else the error that says
        what became of it: refused (ConcurrencyError), not stored, or unknown. A batch
        found stored by an earlier save, at another position, is told to ``repeated``."""
        feed = self.feed
        try:
            if isinstance(sent, Exception):
                raise sent
            result = sent.result()
        except DRIVER_ERRORS as exc:
            if mark is not None and feed is not None and not_stored(exc):
                feed.abandon(mark)  # readers (or the sequencer) need not wait to void it
            error = write_error(self.url, exc, batch)
            error.__cause__ = exc
            return error
        if result.was_applied:
            return None
        if feed is None or mark is None:
            return not_applied(batch, None, result, self.settings.feed_fence_after)
        value = feed.value(mark)
        refused = not_applied(batch, value, result, self.settings.feed_fence_after, feed.mark)
        if refused is None and repeated is not None:
            first = stored_position(result, min(r.originator_version for r in batch), feed.mark)
            if first is not None and first != value:
                repeated(first)
        return refused

    def _statement(self, batch: Sequence[Record], mark: Any) -> Statement:
        """The batch's conditional write, its rows carrying the feed's ``mark``."""
        connection, feed = self.connection(), self.feed
        insert = connection.statements.insert_event if feed is None else feed.insert(connection)
        value = UNSET_VALUE if feed is None or mark is None else feed.value(mark)
        if len(batch) == 1:
            r = batch[0]
            return insert.bind((r.originator_id, r.originator_version, r.topic, r.data, value))
        statement = BatchStatement(batch_type=BatchType.LOGGED)
        for r in batch:
            statement.add(insert, (r.originator_id, r.originator_version, r.topic, r.data, value))
        return statement

    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        return list(
            map(as_record, self.select_rows(originator_id, gt=gt, lte=lte, desc=desc, limit=limit))
        )

    def select_rows(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[RecordFields]:
        connection = self.connection()
        statement = connection.statements.select_desc if desc else connection.statements.select_asc
        bound = statement.bind(
            (originator_id, -1 if gt is None else gt, MAX_VERSION if lte is None else lte, limit)
        )
        bound.fetch_size = limit  # the whole page in one response
        with self._errors(f"cannot read aggregate {originator_id}"):
            result = connection.session.execute(bound)
        rows: list[RecordFields] = [
            (originator_id, v, t, d, None) for v, t, d in result.current_rows
        ]
        release(result)  # a replay holds one page, however long the aggregate
        return rows

    # -- snapshots

    def put_snapshot(self, record: Record) -> None:
        aggregate_id(record.originator_id)
        row = (record.originator_id, record.originator_version, record.topic, record.data)
        failure = (
            f"the snapshot of {record.originator_id} at version "
            f"{record.originator_version} was not stored"
        )
        self._execute("insert_snapshot", row, failure)

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        params = (aggregate_id(originator_id), MAX_VERSION if lte is None else lte)
        failure = f"cannot read snapshots of {originator_id}"
        row = self._execute("select_snapshot", params, failure).one()
        return None if row is None else Record(originator_id, row[0], row[1], row[2])

    # -- data keys (crypto-shredding)

    def get_data_key(self, originator_id: UUID) -> bytes | None:
        failure = f"cannot read the data key of {originator_id}"
        row = self._execute("select_data_key", (originator_id,), failure).one()
        return None if row is None else bytes(row[0] or b"")

    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        failure = f"cannot store the data key of {originator_id}"
        result = self._execute("insert_data_key", (originator_id, wrapped), failure)
        if result.was_applied:
            return wrapped
        return bytes(column(result, "wrapped") or b"")  # another writer's (or a tombstone)

    def forget_data_key(self, originator_id: UUID) -> None:
        """A tombstone (``b""``), with Paxos so that no concurrent put can outlive it."""
        failure = f"cannot forget the data key of {originator_id}"
        inserted = self._execute("insert_data_key", (originator_id, b""), failure)
        if not inserted.was_applied:
            self._execute("forget_data_key", (originator_id,), failure)

    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        if not old:  # a tombstone is never replaced
            return False
        failure = f"cannot replace the data key of {originator_id}"
        result = self._execute("replace_data_key", (new, originator_id, old), failure)
        return bool(result.was_applied)

    # -- the feed

    def read_feed_page(
        self, after: int, limit: int, topics: tuple[str, ...] | None
    ) -> FeedPage[Record]:
        """The feed, as ``docs/feed.md`` tells: claims resolved in order, abandoned ones
        fenced off once ``feed_fence_after`` old. A claim does not say its events' topics:
        a filtered page is read whole and filtered here, before anything is decoded."""
        if self.feed is None:
            raise StoreError(
                f"{self.url}: the feed is off for this store (feed=false in its URL); "
                "events saved with it off are not in the feed"
            )
        return filter_feed(self.feed.read, after, limit, topics)

    # -- scanning and rewriting

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        """Ids of stored aggregates in token order (the order of Cassandra's partitions)."""
        connection = self.connection()
        if after is None:
            statement = connection.statements.select_ids.bind((limit,))
        else:
            statement = connection.statements.select_ids_after.bind((after, limit))
        statement.fetch_size = limit
        with self._errors("cannot list the aggregates"):
            return [originator_id for (originator_id,) in connection.session.execute(statement)]

    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        """Each aggregate's changes as one conditional batch (one Paxos round); if any
        record changed meanwhile, that aggregate's changes one at a time."""
        groups: dict[UUID, list[tuple[Record, Record]]] = {}
        for old, new in changes:
            groups.setdefault(old.originator_id, []).append((old, new))
        connection = self.connection()
        statement = connection.statements.rewrite_event
        replaced = 0
        try:
            for group in groups.values():
                rows = [
                    (
                        new.topic,
                        new.data,
                        old.originator_id,
                        old.originator_version,
                        old.topic,
                        old.data,
                    )
                    for old, new in group
                ]
                if len(rows) > 1:
                    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                    for row in rows:
                        batch.add(statement, row)
                    if connection.session.execute(batch).was_applied:
                        replaced += len(rows)
                        continue
                for row in rows:
                    replaced += bool(connection.session.execute(statement, row).was_applied)
        except DRIVER_ERRORS as exc:
            raise StoreError(
                f"{self.url}: {replaced} events rewritten, then: {describe(exc)} "
                "(a rewrite is a compare-and-set: run it again)"
            ) from exc
        return replaced

    def refresh_copies(self, progress: Callable[[int], None] = lambda done: None) -> int:
        """The sequenced feed's copies of its batches, made again (SequencedFeed); in a
        sequenced keyspace opened without the feed, StoreError: it has no sequencer to
        settle the feed, and copies left stale would be read (open it with feed=sequenced)."""
        if isinstance(self.feed, SequencedFeed):
            return self.feed.refresh_copies(progress)
        keyspace = self.connection().cluster.metadata.keyspaces.get(self.settings.keyspace)
        feed = None if keyspace is None else keyspace.tables.get("feed")
        if feed is not None and "copy" in feed.columns:
            raise StoreError(
                f"{self.url}: the keyspace's feed is sequenced and its rows carry copies of "
                "the records just rewritten, which this store (feed=false) cannot make again: "
                "run it again with feed=sequenced in the URL (what is rewritten already is "
                "passed over)"
            )
        return 0

    def _execute(self, statement: str, params: tuple[object, ...], failure: str) -> Any:
        """One prepared statement's result; a driver error becomes a StoreError saying
        ``failure``."""
        connection = self.connection()
        with self._errors(failure):
            return connection.session.execute(getattr(connection.statements, statement), params)

    # -- tracking (process applications): tracking.py, and docs/processes.md

    tracks_per_aggregate = True  # no transaction across partitions: recorded per aggregate

    def append_tracked(self, records: Sequence[Record], tracking: Tracking) -> None:
        self.tracking.append(records, tracking)

    def track(self, tracking: Tracking) -> None:
        self.tracking.track(tracking)

    def tracked_position(self, upstream: str) -> int:
        return self.tracking.position(upstream)

    def last_reaction(self, originator_id: UUID, upstream: str) -> Reacted | None:
        return self.tracking.last_reaction(originator_id, upstream)

    # -- closing

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()  # (its sequencer, if any: its lease given up)
        with self._lock:
            connection, self._connection = self._connection, None
        # A connection inherited across fork belongs to the parent: its threads
        # do not exist here, so it is dropped, not shut down.
        if connection is not None and connection.pid == os.getpid():
            connection.cluster.shutdown()


def _positions(
    records: Sequence[Record], batches: Sequence[Sequence[Record]], claims: Sequence[int]
) -> list[int]:
    """Each record's feed position, in the records' order: its batch's claim, and its
    place among the versions the claim spans (as the feed reads it: INDEX_BITS)."""
    at: dict[tuple[UUID, int], int] = {}
    for batch, claim in zip(batches, claims, strict=True):
        first = min(r.originator_version for r in batch)
        for r in batch:
            at[(r.originator_id, r.originator_version)] = (
                (claim << INDEX_BITS) + r.originator_version - first + 1
            )
    return [at[(r.originator_id, r.originator_version)] for r in records]


def _by_aggregate(records: Iterable[Record]) -> list[list[Record]]:
    """The records grouped by aggregate, in order of first appearance."""
    groups: dict[UUID, list[Record]] = {}
    for r in records:
        groups.setdefault(r.originator_id, []).append(r)
    return list(groups.values())
