"""The Cassandra store's keyspace and tables: created unless they exist (or said missing),
waited for until every node serves them, and the server's limit on one write."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cassandra import ConsistencyLevel, OperationTimedOut, ReadTimeout, Unavailable
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import SimpleStatement

from cairn.errors import StoreError
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS
from cairn.stores.cassandra.session import SCHEMA_WAIT
from cairn.stores.cassandra.settings import Settings
from cairn.stores.cassandra.statements import (
    ADD_CLAIMS_END,
    ADD_COPY,
    ADD_EPOCH,
    ADD_POSITION,
    ADD_SEALED,
    ADD_TRACKED,
    CLAIMED_COLUMNS,
    CREATE_KEYSPACE,
    CREATE_SEQUENCED,
    CREATE_TABLES,
    CREATE_TRACKING,
    SELECT_ANY_ROW,
    SELECT_SETTINGS,
    SEQUENCED_COLUMNS,
    SEQUENCED_TABLES,
    TABLES,
)

# The server settings that bound one write request (a conditional batch is one
# request and one mutation); both are 16 MiB by default. The 50 KiB
# batch_size_fail_threshold does not apply: Cassandra checks it only for
# unconditional batches spanning several partitions.
SIZE_SETTINGS = ("native_transport_max_message_size", "max_mutation_size")
DEFAULT_WRITE_LIMIT = 16 * 1024 * 1024
_SCHEMA_SETTLING = re.compile(
    r"does not exist|doesn't exist|unconfigured table|Unknown CF|INCOMPATIBLE_SCHEMA", re.I
)
# A column another process added meanwhile (Cassandra 4 and 5 say it in these words).
_COLUMN_EXISTS = re.compile(
    r"conflicts with an existing column|Column with name '\w+' already exists"
)
_NO_POSITION = "the events' position column"
_NO_SEALED = "the feed's sealed column"
_NO_EPOCH = "the feed's epoch column"
_NO_CLAIMS_END = "the sequenced feed's claims_end column"
_NO_COPY = "the sequenced feed's copy column"
# Columns added since the first keyspaces were made, in the order _missing names them.
_ADDED_COLUMNS = (
    (_NO_POSITION, ADD_POSITION),
    (_NO_SEALED, ADD_SEALED),
    (_NO_EPOCH, ADD_EPOCH),
    (_NO_CLAIMS_END, ADD_CLAIMS_END),
    (_NO_COPY, ADD_COPY),
)
_NO_TRACKING = "the tracking table or the events' tracked columns"
# A node down (Unavailable: the coordinator knows; a lost or refused connection: the
# driver does), restarting (bootstrapping), or slow (a timeout, overloaded).
_DOWN_OR_SLOW = (
    Unavailable,
    ReadTimeout,
    OperationTimedOut,
    ConnectionException,
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    OSError,
)
T = TypeVar("T")

log = logging.getLogger(__name__)


def settled(action: Callable[[], T]) -> T:
    """``action()``, retried while the node settles a schema change another process made.

    A keyspace or table created a moment ago is listed in the schema tables
    shortly before the node can use it; meanwhile statements on it fail with one
    of the errors ``_SCHEMA_SETTLING`` matches.
    """
    deadline = time.monotonic() + SCHEMA_WAIT
    while True:
        try:
            return action()
        except StoreError as exc:
            cause = exc.__cause__
            if cause is None or not _SCHEMA_SETTLING.search(str(cause)):
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def tables(settings: Settings) -> tuple[str, ...]:
    """The tables a store of these settings needs."""
    return (*SEQUENCED_TABLES, *TABLES) if settings.sequenced else TABLES


def ensure_schema(cluster: Any, session: Any, settings: Settings) -> None:
    """Create the keyspace and tables unless they exist (or say which are missing)."""
    check_design(cluster, settings)
    missing = _add_columns(cluster, session, settings)
    if not missing:
        return
    if missing == _NO_TRACKING:
        if settings.create:  # else: a keyspace for any application but a process
            _add_tracking(cluster, session, settings)
        return
    if not settings.create:
        raise StoreError(
            f"{settings.url}: {missing} does not exist and create=false; create it, "
            "or drop create=false from the URL to let cairn create it"
        )
    keyspace = settings.quoted_keyspace
    replication = _replication_cql(settings, cluster)
    statements = [CREATE_KEYSPACE.format(keyspace=keyspace, replication=replication)]
    creates: tuple[str, ...] = (*CREATE_TABLES, CREATE_TRACKING)
    columns = SEQUENCED_COLUMNS if settings.sequenced else CLAIMED_COLUMNS
    if settings.sequenced:
        creates = (*CREATE_SEQUENCED, *creates)  # first: see check_design
    statements += [cql.format(keyspace=keyspace, **columns) for cql in creates]
    try:
        for cql in statements:
            result = _execute_ddl(cluster, session, cql)
            if not result.response_future.is_schema_agreed:
                raise StoreError(
                    f"{settings.url}: the nodes did not agree on the new schema within "
                    f"{SCHEMA_WAIT:.0f} s; "
                    "check that every node is up (nodetool describecluster), then retry"
                )
    except DRIVER_ERRORS as exc:
        raise StoreError(f"{settings.url}: cannot create {missing}: {exc}") from exc
    _add_columns(cluster, session, settings)


def _execute_ddl(cluster: Any, session: Any, cql: str) -> Any:
    """Run one ``IF NOT EXISTS`` statement on the first node, in a fixed order, that answers.

    Every process sends its DDL to the same node, so that concurrent first uses
    are serialised by that node's schema updates instead of racing to create the
    same table twice on different nodes. A node that is down, restarting or
    marked down by the driver is passed over for the next one: the statements
    are idempotent, and a store must open while one node of several is away.
    """
    hosts = sorted(
        (h for h in cluster.metadata.all_hosts() if h.is_up is not False),
        key=lambda h: str(h.endpoint),
    )
    for host in hosts[:-1]:
        try:
            return session.execute(cql, host=host, timeout=60)
        except DRIVER_ERRORS as exc:
            if not down_or_slow(exc):
                raise
            log.info("DDL not sent to %s, which is down or slow (%s); trying the next", host, exc)
    return session.execute(cql, host=hosts[-1] if hosts else None, timeout=60)


def check_design(cluster: Any, settings: Settings) -> None:
    """Refuse a keyspace whose feed is of the other design than the URL's (claims, or
    sequenced: told by its intents table, which a cutover adds first). Moving a keyspace of
    claims to the sequenced feed is the cutover's (cutover.py), not an open's. A store with
    feed=false opens either."""
    keyspace = cluster.metadata.keyspaces.get(settings.keyspace)
    if not settings.feed or keyspace is None or "feed" not in keyspace.tables:
        return
    sequenced = "intents" in keyspace.tables
    if sequenced == settings.sequenced:
        return
    if settings.sequenced:
        raise StoreError(
            f"{settings.url}: keyspace {settings.keyspace!r} has a feed of claims (made "
            "without feed=sequenced); open it without feed=sequenced, or move it to the "
            "sequenced feed first with 'cairn cutover' (docs/feed.md, \"Cutover\")"
        )
    raise StoreError(
        f"{settings.url}: keyspace {settings.keyspace!r} has a sequenced feed (made with "
        "feed=sequenced, or cut over to it by 'cairn cutover'); open it with feed=sequenced "
        "(or feed=false) in the URL"
    )


def check_replicas(session: Any, settings: Settings) -> None:
    """Read each table once from every replica, so that none is used before every
    node serves it: schema agreement says the nodes have the same schema version,
    yet a replica can refuse a table made a moment ago (INCOMPATIBLE_SCHEMA). A
    node that is down, restarting or slow is not waited for: the store works at
    QUORUM without it, and it learns the schema when it is back."""
    for table in tables(settings):
        query = SimpleStatement(
            SELECT_ANY_ROW.format(keyspace=settings.quoted_keyspace, table=table),
            consistency_level=ConsistencyLevel.ALL,
        )
        try:
            session.execute(query, timeout=SCHEMA_WAIT)
        except DRIVER_ERRORS as exc:
            if down_or_slow(exc):
                log.info(
                    "%s: a replica did not answer at open, not waited for: %s", settings.url, exc
                )
                return
            raise StoreError(f"{settings.url}: cannot read table {table}: {exc}") from exc


def down_or_slow(exc: BaseException) -> bool:
    """Whether a read's error says only that nodes are down, restarting or slow (rather
    than that one refuses the table). The driver's NoHostAvailable wraps each host's error:
    during a rolling restart one host's lost connection beside another's Unavailable."""
    if isinstance(exc, NoHostAvailable):
        return all(down_or_slow(e) for e in (getattr(exc, "errors", None) or {}).values())
    return isinstance(exc, _DOWN_OR_SLOW)


def server_write_limit(session: Any, settings: Settings) -> int:
    """The most one write request may carry: the smaller of the server's limits."""
    cql = SELECT_SETTINGS.format(names=", ".join(f"'{name}'" for name in SIZE_SETTINGS))
    try:
        rows = session.execute(cql)
    except DRIVER_ERRORS as exc:
        # Servers before 4.0 have no settings table: assume their defaults.
        log.info(
            "%s: cannot read the server's size limits (%s); assuming 16 MiB", settings.url, exc
        )
        return DEFAULT_WRITE_LIMIT
    limits = [_bytes(value) for _, value in rows]
    return min((n for n in limits if n), default=DEFAULT_WRITE_LIMIT)


def _missing(cluster: Any, settings: Settings) -> str | None:
    """The keyspace or first table (or column) that does not exist yet, in words, or None."""
    keyspace = cluster.metadata.keyspaces.get(settings.keyspace)
    if keyspace is None:
        return f"keyspace {settings.keyspace!r}"
    for table in tables(settings):
        if table not in keyspace.tables:
            return f"table {settings.keyspace}.{table}"
    if "position" not in keyspace.tables["events"].columns:
        return _NO_POSITION
    if "sealed" not in keyspace.tables["feed"].columns:
        return _NO_SEALED
    if "epoch" not in keyspace.tables["feed"].columns:
        return _NO_EPOCH
    if settings.sequenced and "claims_end" not in keyspace.tables["feed"].columns:
        return _NO_CLAIMS_END
    if settings.sequenced and "copy" not in keyspace.tables["feed"].columns:
        return _NO_COPY
    if "tracking" not in keyspace.tables or "tracked" not in keyspace.tables["events"].columns:
        return _NO_TRACKING
    return None


def _add_columns(cluster: Any, session: Any, settings: Settings) -> str | None:
    """Give tables made by an earlier cairn the columns added since; what is missing then."""
    missing = _missing(cluster, settings)
    for column, cql in _ADDED_COLUMNS:
        if missing != column:
            continue
        if not settings.create:
            raise StoreError(
                f"{settings.url}: {column} does not exist (an earlier cairn made the table) "
                "and create=false; open it once without create=false to let cairn add it"
            )
        try:
            session.execute(cql.format(keyspace=settings.quoted_keyspace), timeout=60)
        except DRIVER_ERRORS as exc:
            if not added_meanwhile(exc):
                raise StoreError(f"{settings.url}: cannot add {column}: {exc}") from exc
        missing = _missing(cluster, settings)
    return missing


def added_meanwhile(exc: BaseException) -> bool:
    """Whether an ``ALTER TABLE ... ADD`` failed only because another process added the
    column first."""
    return bool(_COLUMN_EXISTS.search(str(exc)))


def _add_tracking(cluster: Any, session: Any, settings: Settings) -> None:
    """Give a keyspace made before process applications its tracking table and the events'
    tracked columns (another process may be adding them too)."""
    keyspace = settings.quoted_keyspace
    try:
        session.execute(CREATE_TRACKING.format(keyspace=keyspace), timeout=60)
        if "tracked" not in cluster.metadata.keyspaces[settings.keyspace].tables["events"].columns:
            session.execute(ADD_TRACKED.format(keyspace=keyspace), timeout=60)
    except DRIVER_ERRORS as exc:
        if not added_meanwhile(exc):
            raise StoreError(f"{settings.url}: cannot add {_NO_TRACKING}: {exc}") from exc


def _replication_cql(settings: Settings, cluster: Any) -> str:
    """The keyspace's replication map, as CQL: as the URL says, else up to 3 replicas."""
    if settings.replication:
        factors = ", ".join(f"'{dc}': {n}" for dc, n in settings.replication.items())
        return f"{{'class': 'NetworkTopologyStrategy', {factors}}}"
    hosts = list(cluster.metadata.all_hosts())
    if settings.local_dc and not settings.replication_factor:
        in_dc = sum(1 for h in hosts if h.datacenter == settings.local_dc)
        factor = min(3, max(in_dc, 1))
        return f"{{'class': 'NetworkTopologyStrategy', '{settings.local_dc}': {factor}}}"
    factor = settings.replication_factor or min(3, max(len(hosts), 1))
    return f"{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}"


def _bytes(value: str | None) -> int | None:
    """A size setting's value ('16MiB', '16384KiB', '16777216B', '50') in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i)?B?\s*", value or "")
    if match is None:
        return None
    scale = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}[match.group(2)]
    return int(match.group(1)) * scale
