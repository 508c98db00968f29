"""The cutover of an existing keyspace's feed of claims to the sequenced feed (docs/feed.md,
"Cutover"): the sequenced feed's columns and tables added, then the switch, by Paxos on the
partition of the next claim (no claim is made after it; the sequencer's first position and
cursor are where the claims end), then the keyspace's origin. Each step is idempotent: a
cutover that stopped half way is run again, and one run on a keyspace cut over (or made
sequenced) does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cassandra import ConsistencyLevel

from cairn.errors import StoreError
from cairn.stores.cassandra import schema
from cairn.stores.cassandra.feed import FEED_BUCKET
from cairn.stores.cassandra.intents import now_ms
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS, describe
from cairn.stores.cassandra.session import connect
from cairn.stores.cassandra.settings import Settings, parse_url
from cairn.stores.cassandra.statements import (
    ADD_COLUMN,
    CREATE_SEQUENCED,
    CUTOVER_COLUMNS,
    CUTOVER_ORIGIN,
    SELECT_HEAD,
    SELECT_SWITCH,
    SEQUENCED_TABLES,
    SWITCH,
)
from cairn.stores.cassandra.store import CassandraStore

SWITCH_ATTEMPTS = 100  # switch rounds that may lose to claims still being made


@dataclass
class Cutover:
    """What a cutover found, and what it did (or, in a dry run, would do)."""

    keyspace: str
    design: str  # what the keyspace had: "claims", "claims, cutover begun" or "sequenced"
    head: int | None  # the first position the sequencer gives (the claims end before it)
    switched: bool = False  # this run wrote the switch
    dry_run: bool = False


def cut_over(url: str, *, dry_run: bool = False, say: Callable[[str], None] = print) -> Cutover:
    """Move the keyspace of ``url`` (a cassandra:// URL, its feed option ignored) from the
    feed of claims to the sequenced feed, keeping every position; ``say`` is told each step.

    Every writer of the claims' design must be stopped, or run a cairn that checks the
    switch (this one), before: a claim made after the switch by a writer that does not
    check it could come before an earlier batch of its aggregate. Raises StoreError if
    the keyspace is missing or a step fails (then run it again).
    """
    settings = parse_url(url)
    if not settings.create:
        raise StoreError(f"{settings.url}: the cutover adds tables; drop create=false from the URL")
    design = _design(settings)
    if design == "sequenced":
        say(f"{settings.keyspace}: the feed is sequenced already: nothing to do")
        return Cutover(settings.keyspace, design, None, dry_run=dry_run)
    claims = CassandraStore(replace(settings, feed=False, sequenced=False))
    try:
        head = _head(claims)
        if dry_run:
            say(f"{settings.keyspace}: {in_words(design)}, its next claim at {head}")
            return Cutover(settings.keyspace, design, head, dry_run=True)
        say(f"{settings.keyspace}: adding the sequenced feed's columns and tables")
        _add_schema(claims)
        say(f"{settings.keyspace}: the switch: no claim from claim {head} on")
        head, cursor, switched = _switch(claims)
        say(f"{settings.keyspace}: the origin: {settings.shards} shards, its cursor the switch's")
        _origin(claims, cursor, head)
    finally:
        claims.close()
    sequenced = CassandraStore(replace(settings, feed=True, sequenced=True))
    try:
        assert sequenced.feed is not None
        sequenced.feed.intents.origin()  # type: ignore[attr-defined]  # every shard closed
    finally:
        sequenced.close()
    say(f"{settings.keyspace}: cut over; the sequencer gives positions from claim {head} on")
    return Cutover(settings.keyspace, design, head, switched)


def in_words(design: str) -> str:
    """A keyspace's design (Cutover.design), as a message says it."""
    return {
        "claims": "a feed of claims",
        "claims, cutover begun": "a feed of claims whose cutover stopped half way",
    }.get(design, "a sequenced feed")


def _design(settings: Settings) -> str:
    """The keyspace's feed, from its tables and bucket 0's origin (StoreError if none)."""
    cluster, session = connect(settings)
    try:
        keyspace = cluster.metadata.keyspaces.get(settings.keyspace)
        if keyspace is None or "feed" not in keyspace.tables:
            raise StoreError(
                f"{settings.url}: keyspace {settings.keyspace!r} has no feed to cut over"
            )
        if not set(SEQUENCED_TABLES) <= set(keyspace.tables):
            return "claims"
        if "shards" not in keyspace.tables["feed"].columns:
            return "claims, cutover begun"
        cql = SELECT_SWITCH.format(keyspace=settings.quoted_keyspace)
        row = _execute(settings, session, cql, (0,))
        if row is not None and row[3] is not None:
            return "sequenced"
        return "claims, cutover begun"
    finally:
        cluster.shutdown()


def _add_schema(store: CassandraStore) -> None:
    """The sequenced feed's columns, then its tables (which say the keyspace is sequenced, or
    being cut over), each unless it exists."""
    settings, connection = store.settings, store.connection()
    cluster, session = connection.cluster, connection.session
    keyspace = settings.quoted_keyspace
    for table, column, kind in CUTOVER_COLUMNS:
        if column in cluster.metadata.keyspaces[settings.keyspace].tables[table].columns:
            continue
        cql = ADD_COLUMN.format(keyspace=keyspace, table=table, column=column, type=kind)
        _ddl(store, cql, f"column {table}.{column}")
    for create in CREATE_SEQUENCED:
        _ddl(store, create.format(keyspace=keyspace), "the sequenced feed's tables")
    schema.settled(lambda: schema.check_replicas(session, replace(settings, sequenced=True)))


def _ddl(store: CassandraStore, cql: str, what: str) -> None:
    connection = store.connection()
    try:
        result = schema._execute_ddl(connection.cluster, connection.session, cql)
    except DRIVER_ERRORS as exc:
        if schema.added_meanwhile(exc):  # (another run added it)
            return
        raise StoreError(f"{store.url}: cannot add {what}: {describe(exc)}") from exc
    if not result.response_future.is_schema_agreed:
        raise StoreError(
            f"{store.url}: the nodes did not agree on the new schema ({what}); check that "
            "every node is up (nodetool describecluster), then run the cutover again"
        )


def _head(store: CassandraStore) -> int:
    """The next claim's position (read at SERIAL: a claim in flight is completed first)."""
    bucket, state = _newest(store, SELECT_HEAD)
    return bucket * FEED_BUCKET if state[0] is None else int(state[0])


def _switch(store: CassandraStore) -> tuple[int, int, bool]:
    """Write the switch on the partition of the next claim, unless it is there: the first
    position the sequencer gives, its first cursor (ms), and whether this run wrote it."""
    settings = store.settings
    session = store.connection().session
    switch = session.prepare(SWITCH.format(keyspace=settings.quoted_keyspace))
    for _ in range(SWITCH_ATTEMPTS):
        bucket, (head, epoch, cursor, _shards) = _newest(store, SELECT_SWITCH)
        if epoch is not None:  # switched already (by a run that stopped before the end)
            return int(head or bucket * FEED_BUCKET), int(cursor or now_ms()), False
        expected = head
        if head is None:  # (bucket 0, with no claim yet)
            head = bucket * FEED_BUCKET
        elif head == (bucket + 1) * FEED_BUCKET:  # full: the next claim begins the next one
            bucket, expected = bucket + 1, None
        cursor = now_ms()
        try:
            applied = session.execute(switch, (head, cursor, head, bucket, expected)).was_applied
        except DRIVER_ERRORS as exc:
            raise StoreError(
                f"{store.url}: the switch may or may not be written ({describe(exc)}); run "
                "the cutover again"
            ) from exc
        if applied:
            return head, cursor, True
    raise StoreError(
        f"{store.url}: {SWITCH_ATTEMPTS} attempts to write the switch all lost to claims being "
        "made: stop the writers of claims (or run a cairn that checks the switch), then run "
        "the cutover again"
    )


def _origin(store: CassandraStore, cursor: int, head: int) -> None:
    """Bucket 0's origin: the URL's shards, the switch's cursor, and its head, where the
    claims end (unless it is there)."""
    settings = store.settings
    session = store.connection().session
    try:
        origin = session.prepare(CUTOVER_ORIGIN.format(keyspace=settings.quoted_keyspace))
        session.execute(origin, (settings.shards, cursor, head))
    except DRIVER_ERRORS as exc:
        raise StoreError(
            f"{store.url}: cannot write the sequenced feed's origin ({describe(exc)}); run the "
            "cutover again"
        ) from exc


def _newest(store: CassandraStore, select: str) -> tuple[int, tuple[Any, ...]]:
    """The newest begun bucket of the feed (buckets are begun in order, their heads never
    removed) and its statics as ``select`` reads them (the head first), at SERIAL."""
    settings = store.settings
    session = store.connection().session
    cql = select.format(keyspace=settings.quoted_keyspace)

    def statics(bucket: int) -> tuple[Any, ...]:
        row = _execute(settings, session, cql, (bucket,), serial=True)
        return (None,) * 4 if row is None else tuple(row)

    low, high = 0, 1
    while statics(high)[0] is not None:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if statics(middle)[0] is None:
            high = middle
        else:
            low = middle
    return low, statics(low)


def _execute(
    settings: Settings, session: Any, cql: str, params: tuple[Any, ...], serial: bool = False
) -> Any:
    """One row of a read (at SERIAL if asked), or StoreError."""
    statement = session.prepare(cql)
    bound = statement.bind(params)
    if serial:
        bound.consistency_level = ConsistencyLevel.name_to_value[settings.serial_consistency]
    try:
        return session.execute(bound).one()
    except DRIVER_ERRORS as exc:
        raise StoreError(f"{settings.url}: cannot read the feed's head ({describe(exc)})") from exc
