"""Process applications on Cassandra: each reaction's batch records, in its aggregate's own
partition, the upstream position it reacts to; the tracked position is advanced by Paxos,
after the reactions (it may lag). ``docs/processes.md`` tells the protocol and what it proves.

Cassandra has no transaction across partitions, so a reaction cannot be stored with its
tracking in one. It is exactly once per aggregate instead: the conditional batch that
stores a reaction's events in an aggregate's partition also sets the partition's static
``tracked[upstream] = position`` (and ``tracked_from[upstream]``, the version the batch
begins at), on condition that the position recorded there is lower. A reaction stored
before a crash, or by a second runner, is refused by that condition and recognised as
already stored; the process reads ``last_reaction`` when its policy loads an aggregate,
to give the policy the aggregate as it was before the reaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cassandra.query import UNSET_VALUE, BatchStatement, BatchType

from cairn.errors import AlreadyProcessed, ConcurrencyError, StoreError
from cairn.stores.cassandra import schema
from cairn.stores.cassandra.outcomes import (
    DRIVER_ERRORS,
    column,
    not_applied,
    not_stored,
    write_error,
)
from cairn.stores.cassandra.session import WRITE_PROFILE, Connection
from cairn.stores.cassandra.statements import (
    ADVANCE_TRACKED,
    INSERT_TRACKED,
    REACT,
    REACT_FIRST,
    SELECT_REACTED,
    SELECT_TRACKED,
)
from cairn.stores.contract import Reacted, Record, Tracking, check_ids
from cairn.stores.failures import already_processed

if TYPE_CHECKING:
    from cairn.stores.cassandra.store import CassandraStore

TRACK_ATTEMPTS = 10  # Paxos rounds one advance of the tracked position may lose to others
WRITES_IN_FLIGHT = 128  # as the store's saves: a reaction's batches sent at once, at most


class Outcome(Enum):
    """What became of one aggregate's reaction batch."""

    STORED = "stored"
    DONE = "already stored"  # the aggregate records this position, or a later one
    FIRST = "first"  # refused only as the aggregate records no position of the upstream yet


@dataclass(frozen=True)
class Prepared:
    """The tracking statements, prepared on one connection (lazily: a keyspace made before
    process applications, opened with create=false, has no tracking table)."""

    connection: Connection
    react: Any
    react_first: Any
    select_reacted: Any
    select_tracked: Any
    advance_tracked: Any
    insert_tracked: Any


class CassandraTracking:
    """The store's tracking capability (``CassandraStore.append_tracked`` and the rest)."""

    def __init__(self, store: CassandraStore) -> None:
        self.store = store
        self.url = store.url
        self._prepared: Prepared | None = None

    def statements(self) -> Prepared:
        """The statements, prepared on the process's connection (anew after fork)."""
        connection = self.store.connection()
        prepared = self._prepared
        if prepared is None or prepared.connection is not connection:
            prepared = schema.settled(lambda: self._prepare(connection))
            self._prepared = prepared
        return prepared

    def _prepare(self, connection: Connection) -> Prepared:
        keyspace = self.store.settings.quoted_keyspace

        def ready(cql: str) -> Any:
            return connection.session.prepare(cql.format(keyspace=keyspace))

        failure = (
            "cannot prepare the tracking statements (a keyspace made before process "
            "applications gains them when opened once without create=false)"
        )
        with self.store._errors(failure):
            return Prepared(
                connection,
                ready(REACT),
                ready(REACT_FIRST),
                ready(SELECT_REACTED),
                ready(SELECT_TRACKED),
                ready(ADVANCE_TRACKED),
                ready(INSERT_TRACKED),
            )

    # -- reactions

    def append(self, records: Sequence[Record], tracking: Tracking) -> None:
        """Each aggregate's batch as one conditional write that records the reaction in the
        aggregate's partition (claimed in the feed first, as a save is): stored, or
        recognised as stored already. Raises AlreadyProcessed if every one was, and
        otherwise the first error (a ConcurrencyError's ``stored`` names the aggregates
        that hold their part of the reaction, whether stored now or before)."""
        if not records:
            self.track(tracking)
            return
        check_ids(records)
        batches = _by_aggregate(records)
        for batch in batches:  # every batch checked before any is written
            self.store._check(batch)
        feed = self.store.feed
        # A claim's position, or (feed=sequenced) an intent, that the batch's rows carry.
        positions: list[Any] = feed.claim(batches) if feed is not None else [None] * len(batches)
        outcomes: list[Outcome | StoreError | ConcurrencyError] = []
        for start in range(0, len(batches), WRITES_IN_FLIGHT):
            wave = range(start, min(start + WRITES_IN_FLIGHT, len(batches)))
            sent = [self._send(batches[i], positions[i], tracking, first=False) for i in wave]
            for i, future in zip(wave, sent, strict=True):
                outcome = self._outcome(batches[i], positions[i], tracking, future)
                if outcome is Outcome.FIRST:  # the same claim: nothing was written at it
                    again = self._send(batches[i], positions[i], tracking, first=True)
                    outcome = self._outcome(batches[i], positions[i], tracking, again)
                claim = positions[i]
                if outcome is Outcome.DONE and claim is not None and feed is not None:
                    feed.abandon(claim)  # readers void its claim at once
                outcomes.append(outcome)
        if feed is not None:
            feed.saved()
        self._conclude(batches, outcomes, tracking)

    def _send(
        self, batch: Sequence[Record], position: Any, tracking: Tracking, *, first: bool
    ) -> Any:
        """The batch's conditional write, sent: its future, or the error that kept it from
        leaving (then it is not stored)."""
        prepared, feed = self.statements(), self.store.feed
        connection = prepared.connection
        insert = connection.statements.insert_event if feed is None else feed.insert(connection)
        at = UNSET_VALUE if feed is None or position is None else feed.value(position)
        statement = BatchStatement(batch_type=BatchType.LOGGED)
        for r in batch:
            statement.add(insert, (r.originator_id, r.originator_version, r.topic, r.data, at))
        upstream, reacted_to = tracking
        begins = min(r.originator_version for r in batch)
        marks = (upstream, reacted_to, upstream, begins, batch[0].originator_id)
        if first or begins == 0:
            statement.add(prepared.react_first, (*marks, upstream))
        else:
            statement.add(prepared.react, (*marks, upstream, reacted_to))
        try:
            return prepared.connection.session.execute_async(
                statement, execution_profile=WRITE_PROFILE
            )
        except DRIVER_ERRORS as exc:
            return exc

    def _outcome(
        self, batch: Sequence[Record], position: Any, tracking: Tracking, sent: Any
    ) -> Outcome | StoreError | ConcurrencyError:
        """What became of one batch's conditional write."""
        try:
            if isinstance(sent, Exception):
                raise sent
            result = sent.result()
        except DRIVER_ERRORS as exc:
            feed = self.store.feed
            if position is not None and feed is not None and not_stored(exc):
                feed.abandon(position)
            error = write_error(self.url, exc, batch)
            error.__cause__ = exc
            return error
        if result.was_applied:
            return Outcome.STORED
        recorded = (column(result, "tracked") or {}).get(tracking.upstream)
        if recorded is not None and recorded >= tracking.position:
            return Outcome.DONE
        versions = {r.originator_version for r in batch}
        names = list(result.column_names)
        at = names.index("originator_version") if "originator_version" in names else None
        in_the_way = at is not None and any(row[at] in versions for row in result.current_rows)
        begins = min(versions)
        if recorded is None and not in_the_way and begins > 0:
            return Outcome.FIRST
        feed = self.store.feed
        mark = None if feed is None or position is None else feed.value(position)
        marked = "position" if feed is None else feed.mark
        refused = not_applied(batch, mark, result, self.store.settings.feed_fence_after, marked)
        return Outcome.STORED if refused is None else refused

    def _conclude(
        self,
        batches: Sequence[Sequence[Record]],
        outcomes: Sequence[Outcome | StoreError | ConcurrencyError],
        tracking: Tracking,
    ) -> None:
        errors = [o for o in outcomes if isinstance(o, StoreError | ConcurrencyError)]
        if not errors:
            if all(o is Outcome.DONE for o in outcomes):
                raise AlreadyProcessed(already_processed(self.url, tracking))
            return
        held = [
            b[0].originator_id
            for b, o in zip(batches, outcomes, strict=True)
            if isinstance(o, Outcome)
        ]
        first = errors[0]
        if len(batches) == 1:
            raise first from first.__cause__
        summary = (
            f" This reaction had {len(batches)} aggregates, each stored on its own; holding "
            f"their part of it: {', '.join(map(str, held)) or 'none'}."
        )
        if isinstance(first, ConcurrencyError) and all(
            isinstance(e, ConcurrencyError) for e in errors
        ):
            raise ConcurrencyError(f"{first}{summary}", held) from None
        raise type(first)(f"{first}{summary}") from first.__cause__

    def last_reaction(self, originator_id: UUID, upstream: str) -> Reacted | None:
        """The last reaction to ``upstream`` stored in the aggregate's partition, or None."""
        prepared = self.statements()
        with self.store._errors(f"cannot read the reactions stored in {originator_id}"):
            row = prepared.connection.session.execute(
                prepared.select_reacted, (originator_id,)
            ).one()
        if row is None:
            return None
        position, version = (row[0] or {}).get(upstream), (row[1] or {}).get(upstream)
        return None if position is None or version is None else Reacted(position, version)

    # -- the tracked position

    def track(self, tracking: Tracking) -> None:
        """Advance the tracked position by Paxos, unless it is already as far (only ever
        advanced: a runner behind another cannot move it back)."""
        prepared = self.statements()
        session = prepared.connection.session
        upstream, position = tracking
        failure = f"cannot track {upstream!r}"
        for _ in range(TRACK_ATTEMPTS):
            with self.store._errors(failure):
                result = session.execute(prepared.advance_tracked, (position, upstream, position))
                if result.was_applied:
                    return
                current = column(result, "position")
                if current is None:  # no row yet
                    result = session.execute(prepared.insert_tracked, (upstream, position))
                    if result.was_applied:
                        return
                    current = column(result, "position")
            if current is not None and current >= position:
                return
        raise StoreError(
            f"{self.url}: {failure}: {TRACK_ATTEMPTS} attempts all lost to other runners"
        )

    def position(self, upstream: str) -> int:
        prepared = self.statements()
        with self.store._errors(f"cannot read the tracked position of {upstream!r}"):
            row = prepared.connection.session.execute(prepared.select_tracked, (upstream,)).one()
        return 0 if row is None or row[0] is None else int(row[0])


def _by_aggregate(records: Sequence[Record]) -> list[list[Record]]:
    """The records grouped by aggregate, in order of first appearance."""
    groups: dict[UUID, list[Record]] = {}
    for r in records:
        groups.setdefault(r.originator_id, []).append(r)
    return list(groups.values())
