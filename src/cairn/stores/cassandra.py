"""The Cassandra store: one partition per aggregate; each save one conditional batch on it.

URL: ``cassandra://[user:password@]host1[:port],host2[:port]/keyspace[?options]``
(each host's port defaults to 9042). Options:

- ``replication_factor=N``: SimpleStrategy with N replicas, or
  ``replication=dc1:3,dc2:3``: NetworkTopologyStrategy. Used only when cairn
  creates the keyspace; the default is SimpleStrategy with as many replicas as
  there are nodes, at most 3 (per data centre, with ``local_dc``).
- ``local_dc=NAME``: send requests to that data centre's nodes, at
  LOCAL_QUORUM and LOCAL_SERIAL instead of QUORUM and SERIAL.
- ``consistency=LEVEL``, ``serial_consistency=SERIAL|LOCAL_SERIAL``: override those.
- ``username=``, ``password=`` (or ``user:password@`` before the hosts).
- ``create=false``: never create the keyspace or tables; fail if they are missing.
- ``connect_timeout=SECONDS`` (default 5), ``request_timeout=SECONDS`` (default 10).
- ``max_batch_size=BYTES``: refuse larger saves (default: what the server accepts
  in one write, ``native_transport_max_message_size`` and ``max_mutation_size``).

A save of one aggregate is one ``INSERT ... IF NOT EXISTS`` per event in a
single conditional batch on the aggregate's partition: Paxos applies it whole
or not at all. A save of several aggregates is one such batch per aggregate,
in order; each is atomic on its own (Cassandra has no multi-partition
transactions), and a :class:`~cairn.ConcurrencyError` lists in ``stored`` the
aggregates stored before the conflict.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from cassandra import (
    ConsistencyLevel,
    DriverException,
    OperationTimedOut,
    ProtocolVersion,
    RequestValidationException,
    Unavailable,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    FallthroughRetryPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import ErrorMessage, IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import BatchStatement, BatchType, Statement, tuple_factory

from cairn.errors import ConcurrencyError, OutcomeUnknown, StoreError
from cairn.stores import Record, Recorder, query_params, redact

# All of the store's CQL, in one place. {keyspace} is the quoted keyspace name.
CREATE_KEYSPACE = "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
CREATE_TABLES = (
    """CREATE TABLE IF NOT EXISTS {keyspace}.events (
        originator_id uuid,
        originator_version bigint,
        topic text,
        data blob,
        PRIMARY KEY ((originator_id), originator_version))""",
    """CREATE TABLE IF NOT EXISTS {keyspace}.snapshots (
        originator_id uuid,
        originator_version bigint,
        topic text,
        data blob,
        PRIMARY KEY ((originator_id), originator_version))
        WITH CLUSTERING ORDER BY (originator_version DESC)""",
)
TABLES = ("events", "snapshots")
INSERT_EVENT = (
    "INSERT INTO {keyspace}.events (originator_id, originator_version, topic, data) "
    "VALUES (?, ?, ?, ?) IF NOT EXISTS"
)
SELECT_EVENTS = (
    "SELECT originator_version, topic, data FROM {keyspace}.events WHERE originator_id = ? "
    "AND originator_version > ? AND originator_version <= ? "
    "ORDER BY originator_version {order} LIMIT ?"
)
INSERT_SNAPSHOT = (
    "INSERT INTO {keyspace}.snapshots (originator_id, originator_version, topic, data) "
    "VALUES (?, ?, ?, ?)"
)
SELECT_SNAPSHOT = (
    "SELECT originator_version, topic, data FROM {keyspace}.snapshots "
    "WHERE originator_id = ? AND originator_version <= ? LIMIT 1"
)
# Aggregates in token order: the order Cassandra can page through cheaply.
SELECT_AGGREGATE_IDS = "SELECT DISTINCT originator_id FROM {keyspace}.events LIMIT ?"
SELECT_AGGREGATE_IDS_AFTER = (
    "SELECT DISTINCT originator_id FROM {keyspace}.events "
    "WHERE token(originator_id) > token(?) LIMIT ?"
)
SELECT_SETTINGS = "SELECT name, value FROM system_views.settings WHERE name IN ({names})"

# The server settings that bound one write request (a conditional batch is one
# request and one mutation); both are 16 MiB by default. The 50 KiB
# batch_size_fail_threshold does not apply: Cassandra checks it only for
# unconditional batches spanning several partitions.
SIZE_SETTINGS = ("native_transport_max_message_size", "max_mutation_size")
DEFAULT_WRITE_LIMIT = 16 * 1024 * 1024
# Bytes a record adds to a request besides its topic and data: the statement's
# id, the uuid and bigint values and each value's length (a safe over-estimate).
RECORD_OVERHEAD = 64
BATCH_OVERHEAD = 256

OPTIONS = (
    "replication_factor",
    "replication",
    "local_dc",
    "consistency",
    "serial_consistency",
    "username",
    "password",
    "create",
    "connect_timeout",
    "request_timeout",
    "max_batch_size",
)
DEFAULT_PORT = 9042
SCHEMA_WAIT = 30.0  # seconds for the nodes to agree on (and serve) a new table
WRITE_PROFILE = "cairn-write"
_KEYSPACE_NAME = re.compile(r"[A-Za-z0-9_]{1,48}")
_HOST = re.compile(r"^(?:\[(?P<ipv6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>\d+))?$")
_MAX_VERSION = 2**63 - 1
_SCHEMA_SETTLING = re.compile(r"does not exist|doesn't exist|unconfigured table|Unknown CF", re.I)
T = TypeVar("T")
# The native protocol v5 error code for a Paxos write whose outcome is unknown,
# which this driver version does not name.
_CAS_WRITE_UNKNOWN = 0x1700

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What a ``cassandra://`` URL says, checked."""

    url: str  # password hidden, for messages
    hosts: tuple[tuple[str, int], ...]
    keyspace: str
    # NetworkTopologyStrategy (data centre -> replicas), or SimpleStrategy:
    replication: Mapping[str, int] | None = None
    replication_factor: int | None = None
    local_dc: str | None = None
    consistency: str = "QUORUM"
    serial_consistency: str = "SERIAL"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    create: bool = True
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    max_batch_size: int | None = None

    @property
    def contact_points(self) -> str:
        """The hosts, as written in messages."""
        return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)


def parse_url(url: str) -> Settings:
    """The settings a ``cassandra://`` URL names; :class:`StoreError` naming what is wrong."""
    shown = redact(url)
    rest = url.split("://", 1)[1]
    location, _, query = rest.partition("?")
    netloc, _, path = location.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    params = query_params(query)
    unknown = sorted(set(params) - set(OPTIONS))
    if unknown:
        raise StoreError(
            f"{shown}: unknown option {', '.join(unknown)}; the options are {', '.join(OPTIONS)}"
        )
    keyspace = path.strip("/")
    if not _KEYSPACE_NAME.fullmatch(keyspace):
        raise StoreError(
            f"{shown}: name a keyspace of 1 to 48 letters, digits or underscores after the hosts "
            f"(cassandra://host:9042/keyspace), not {keyspace!r}"
        )
    if params.get("replication") and params.get("replication_factor"):
        raise StoreError(f"{shown}: give replication_factor or replication, not both")
    user, _, password = userinfo.partition(":")
    local_dc = params.get("local_dc") or None
    return Settings(
        url=shown,
        hosts=_parse_hosts(hostlist, shown),
        keyspace=keyspace,
        replication=_parse_replication(params.get("replication"), shown),
        replication_factor=_positive_int(params, "replication_factor", shown),
        local_dc=local_dc,
        consistency=_level(
            params.get("consistency", "LOCAL_QUORUM" if local_dc else "QUORUM"), shown
        ),
        serial_consistency=_serial_level(params, local_dc, shown),
        username=params.get("username") or _unquote(user) or None,
        password=params.get("password") or _unquote(password) or None,
        create=_flag(params.get("create", "true"), "create", shown),
        connect_timeout=_seconds(params, "connect_timeout", 5.0, shown),
        request_timeout=_seconds(params, "request_timeout", 10.0, shown),
        max_batch_size=_positive_int(params, "max_batch_size", shown),
    )


class CassandraRecorder(Recorder):
    """A keyspace with an events table and a snapshots table, one partition per aggregate.

    The driver's cluster connection is made once per process (a fresh one after
    fork) and shared by the process's threads. Appending records that are
    already stored, byte for byte, is not a conflict: a save repeated after
    :class:`~cairn.errors.OutcomeUnknown` is safe.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.url
        self._keyspace = f'"{settings.keyspace}"'
        self._lock = threading.Lock()
        self._connection: _Connection | None = None
        connection = self._connect()
        try:
            _settled(lambda: self._ensure_schema(connection))
            self._statements = _settled(lambda: self._prepare(connection))
            self.max_batch_size = settings.max_batch_size or self._server_write_limit(connection)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> CassandraRecorder:
        return cls(parse_url(url))

    # -- connection

    def _session(self) -> Any:
        """The process's driver session (connecting anew in a forked child)."""
        connection = self._connection
        if connection is None or connection.pid != os.getpid():
            with self._lock:
                connection = self._connection
                if connection is None or connection.pid != os.getpid():
                    connection = self._connect()
                    self._statements = self._prepare(connection)
        return connection.session

    def _connect(self) -> _Connection:
        settings = self.settings
        cluster = Cluster(
            contact_points=list(settings.hosts),
            auth_provider=_auth(settings),
            execution_profiles=_profiles(settings),
            # Cassandra 4.0 and later speak v5; naming it saves two failed
            # handshakes (and two warnings) per connection.
            protocol_version=ProtocolVersion.V5,
            # Without it, Nagle's algorithm holds back the tail of any request over
            # a few KiB until the server's delayed ACK: 40 ms more per such save.
            sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            connect_timeout=settings.connect_timeout,
            control_connection_timeout=settings.connect_timeout,
            max_schema_agreement_wait=SCHEMA_WAIT,
        )
        try:
            session = cluster.connect()
        except NoHostAvailable as exc:
            cluster.shutdown()
            raise StoreError(
                f"{self.url}: no Cassandra node reachable at {settings.contact_points} "
                f"({_host_errors(exc)})"
            ) from None
        except DriverException as exc:
            cluster.shutdown()
            raise StoreError(f"{self.url}: cannot connect: {exc}") from exc
        self._connection = _Connection(cluster, session, os.getpid())
        return self._connection

    def _ensure_schema(self, connection: _Connection) -> None:
        """Create the keyspace and tables unless they exist (or say which are missing)."""
        missing = self._missing(connection)
        if not missing:
            return
        if not self.settings.create:
            raise StoreError(
                f"{self.url}: {missing} does not exist and create=false; create it, "
                "or drop create=false from the URL to let cairn create it"
            )
        # Every process sends its DDL to the same node, so that concurrent first
        # uses are serialised by that node's schema updates instead of racing
        # to create the same table twice on different nodes.
        host = min(
            (h for h in connection.cluster.metadata.all_hosts() if h.is_up is not False),
            key=lambda h: str(h.endpoint),
            default=None,
        )
        replication = _replication_cql(self.settings, connection.cluster)
        statements = [CREATE_KEYSPACE.format(keyspace=self._keyspace, replication=replication)]
        statements += [cql.format(keyspace=self._keyspace) for cql in CREATE_TABLES]
        try:
            for cql in statements:
                result = connection.session.execute(cql, host=host, timeout=60)
                if not result.response_future.is_schema_agreed:
                    raise StoreError(
                        f"{self.url}: the nodes did not agree on the new schema within "
                        f"{SCHEMA_WAIT:.0f} s; "
                        "check that every node is up (nodetool describecluster), then retry"
                    )
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot create {missing}: {exc}") from exc

    def _missing(self, connection: _Connection) -> str | None:
        """The keyspace or first table that does not exist yet, in words, or None."""
        keyspace = connection.cluster.metadata.keyspaces.get(self.settings.keyspace)
        if keyspace is None:
            return f"keyspace {self.settings.keyspace!r}"
        for table in TABLES:
            if table not in keyspace.tables:
                return f"table {self.settings.keyspace}.{table}"
        return None

    def _prepare(self, connection: _Connection) -> _Statements:
        session, ks = connection.session, self._keyspace
        try:
            return _Statements(
                insert_event=session.prepare(INSERT_EVENT.format(keyspace=ks)),
                select_asc=session.prepare(SELECT_EVENTS.format(keyspace=ks, order="ASC")),
                select_desc=session.prepare(SELECT_EVENTS.format(keyspace=ks, order="DESC")),
                insert_snapshot=session.prepare(INSERT_SNAPSHOT.format(keyspace=ks)),
                select_snapshot=session.prepare(SELECT_SNAPSHOT.format(keyspace=ks)),
                select_ids=session.prepare(SELECT_AGGREGATE_IDS.format(keyspace=ks)),
                select_ids_after=session.prepare(SELECT_AGGREGATE_IDS_AFTER.format(keyspace=ks)),
            )
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot prepare the store's statements: {exc}") from exc

    def _server_write_limit(self, connection: _Connection) -> int:
        """The most one write request may carry: the smaller of the server's limits."""
        cql = SELECT_SETTINGS.format(names=", ".join(f"'{name}'" for name in SIZE_SETTINGS))
        try:
            rows = connection.session.execute(cql)
        except _DRIVER_ERRORS as exc:
            # Servers before 4.0 have no settings table: assume their defaults.
            log.info(
                "%s: cannot read the server's size limits (%s); assuming 16 MiB", self.url, exc
            )
            return DEFAULT_WRITE_LIMIT
        limits = [_bytes(value) for _, value in rows]
        return min((n for n in limits if n), default=DEFAULT_WRITE_LIMIT)

    # -- events

    def append(self, records: Sequence[Record]) -> None:
        batches = _by_aggregate(records)
        for batch in batches:  # check every batch before writing any
            self._check(batch)
        stored: list[UUID] = []
        for batch in batches:
            try:
                self._append_one(batch)
            except ConcurrencyError as exc:
                raise ConcurrencyError(_after(stored, batches, str(exc)), stored) from None
            except StoreError as exc:  # OutcomeUnknown too: keep the class, add what was stored
                raise type(exc)(_after(stored, batches, str(exc))) from exc.__cause__
            stored.append(batch[0].originator_id)

    def _check(self, batch: Sequence[Record]) -> None:
        """Refuse, before anything is sent, a batch that repeats a version or is too large."""
        seen: set[int] = set()
        for r in batch:
            if r.originator_version in seen:
                raise ConcurrencyError(
                    f"aggregate {r.originator_id}: the batch repeats version {r.originator_version}"
                )
            seen.add(r.originator_version)
        size = BATCH_OVERHEAD + sum(
            RECORD_OVERHEAD + len(r.topic.encode()) + len(r.data) for r in batch
        )
        if size > self.max_batch_size:
            raise StoreError(
                f"{self.url}: aggregate {batch[0].originator_id}: the batch of {len(batch)} "
                f"events is {_size(size)}, over {self._limit_in_words()}. Nothing was written."
            )

    def _limit_in_words(self) -> str:
        limit = _size(self.max_batch_size)
        if self.settings.max_batch_size:
            return f"the store URL's max_batch_size of {limit}; raise it in the URL"
        return (
            f"the {limit} a Cassandra node accepts in one write; raise "
            f"{' and '.join(SIZE_SETTINGS)} in cassandra.yaml, or save fewer events at a time"
        )

    def _append_one(self, batch: Sequence[Record]) -> None:
        """Store one aggregate's records as one conditional write, or raise."""
        session = self._session()
        statement = self._statement(batch)
        try:
            result = session.execute(statement, execution_profile=WRITE_PROFILE)
        except _DRIVER_ERRORS as exc:
            raise self._write_error(exc, batch) from exc
        if result.was_applied:
            return
        existing = {row[0]: row for row in _stored_rows(result)}
        if _all_ours(existing, batch):
            # Our own write, completed by a later Paxos round that then found
            # its condition false: it is stored, whole.
            return
        versions = sorted(v for v in existing if v in {r.originator_version for r in batch})
        version = versions[0] if versions else batch[0].originator_version
        raise ConcurrencyError(
            f"aggregate {batch[0].originator_id}: version {version} is already stored "
            f"(stale writer?); nothing of the batch of {_versions(batch)} was stored"
        )

    def _statement(self, batch: Sequence[Record]) -> Statement:
        insert = self._statements.insert_event
        if len(batch) == 1:
            r = batch[0]
            return insert.bind((r.originator_id, r.originator_version, r.topic, r.data))
        statement = BatchStatement(batch_type=BatchType.LOGGED)
        for r in batch:
            statement.add(insert, (r.originator_id, r.originator_version, r.topic, r.data))
        return statement

    def _write_error(self, exc: Exception, batch: Sequence[Record]) -> StoreError:
        """The driver's error on a save, in cairn's terms: known not stored, or unknown."""
        what = f"aggregate {batch[0].originator_id}: the batch of {_versions(batch)}"
        if isinstance(exc, NoHostAvailable):
            return StoreError(
                f"{self.url}: {what} was not stored: no node could take it ({_host_errors(exc)})"
            )
        if _not_stored(exc):
            return StoreError(f"{self.url}: {what} was not stored: {exc}")
        # A timeout or a lost connection after the request left: Paxos may have
        # accepted the batch (it would then be completed by the next read or
        # write of the partition) or not.
        return OutcomeUnknown(
            f"{self.url}: {what} may or may not be stored ({_describe(exc)}); it is stored "
            "whole or not at all. Re-read the aggregate to know which (a write cut off "
            "mid-Paxos can show only once the next save to the aggregate completes it)."
        )

    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        session = self._session()
        statement = self._statements.select_desc if desc else self._statements.select_asc
        bound = statement.bind(
            (originator_id, -1 if gt is None else gt, _MAX_VERSION if lte is None else lte, limit)
        )
        bound.fetch_size = limit  # the whole page in one response
        try:
            rows = session.execute(bound).current_rows
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read aggregate {originator_id}: {exc}") from exc
        page = [Record(originator_id, v, t, d) for v, t, d in rows]
        # The driver keeps the response in a reference cycle (its future and the
        # future's timeout timer) that only the cyclic garbage collector frees,
        # and rarely once the heap is large. Emptying the rows lets each page go
        # once it is replayed: a replay holds one page, however long the aggregate.
        rows.clear()
        return page

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        """Ids of stored aggregates in token order (the order of Cassandra's partitions)."""
        session = self._session()
        if after is None:
            statement = self._statements.select_ids.bind((limit,))
        else:
            statement = self._statements.select_ids_after.bind((after, limit))
        statement.fetch_size = limit
        try:
            return [originator_id for (originator_id,) in session.execute(statement)]
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot list the aggregates: {exc}") from exc

    # -- snapshots

    def put_snapshot(self, record: Record) -> None:
        session = self._session()
        row = (record.originator_id, record.originator_version, record.topic, record.data)
        try:
            session.execute(self._statements.insert_snapshot, row)
        except _DRIVER_ERRORS as exc:
            raise StoreError(
                f"{self.url}: the snapshot of {record.originator_id} at version "
                f"{record.originator_version} was not stored: {exc}"
            ) from exc

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        session = self._session()
        params = (originator_id, _MAX_VERSION if lte is None else lte)
        try:
            row = session.execute(self._statements.select_snapshot, params).one()
        except _DRIVER_ERRORS as exc:
            raise StoreError(
                f"{self.url}: cannot read snapshots of {originator_id}: {exc}"
            ) from exc
        return None if row is None else Record(originator_id, row[0], row[1], row[2])

    def close(self) -> None:
        with self._lock:
            connection, self._connection = self._connection, None
        # A connection inherited across fork belongs to the parent: its threads
        # do not exist here, so it is dropped, not shut down.
        if connection is not None and connection.pid == os.getpid():
            connection.cluster.shutdown()


@dataclass(frozen=True)
class _Connection:
    cluster: Any
    session: Any
    pid: int


@dataclass(frozen=True)
class _Statements:
    insert_event: Any
    select_asc: Any
    select_desc: Any
    insert_snapshot: Any
    select_snapshot: Any
    select_ids: Any
    select_ids_after: Any


# Errors the driver raises from a request.
_DRIVER_ERRORS = (DriverException, ErrorMessage, NoHostAvailable, ConnectionException)
# Errors raised before the coordinator started the write: the batch was not stored.
_NOT_STORED = (RequestValidationException, OverloadedErrorMessage, IsBootstrappingErrorMessage)


def _not_stored(exc: Exception) -> bool:
    """Whether a save's error proves that nothing was stored.

    Anything not known to come before the write (a timeout, a lost connection, a
    failure during Paxos) leaves the outcome unknown.
    """
    if isinstance(exc, Unavailable):
        # Paxos counts live replicas at the serial level before it starts, but
        # at the commit's level only once the batch has been accepted.
        return exc.consistency in (ConsistencyLevel.SERIAL, ConsistencyLevel.LOCAL_SERIAL)
    return isinstance(exc, _NOT_STORED)


def _settled(action: Callable[[], T]) -> T:
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


def _profiles(settings: Settings) -> dict[object, ExecutionProfile]:
    """Reads may be retried on another node; conditional writes never are (see _write_error)."""
    levels = {
        "consistency_level": ConsistencyLevel.name_to_value[settings.consistency],
        "serial_consistency_level": ConsistencyLevel.name_to_value[settings.serial_consistency],
        "request_timeout": settings.request_timeout,
        "row_factory": tuple_factory,
    }
    return {
        EXEC_PROFILE_DEFAULT: ExecutionProfile(
            load_balancing_policy=_balancing(settings), **levels
        ),
        # A retried conditional write that had in fact been applied would find
        # its own rows and report a conflict: every error comes back to cairn.
        WRITE_PROFILE: ExecutionProfile(
            load_balancing_policy=_balancing(settings),
            retry_policy=FallthroughRetryPolicy(),
            **levels,
        ),
    }


def _balancing(settings: Settings) -> TokenAwarePolicy:
    """Replicas first (Paxos then needs no extra hop), nodes of the local data centre only."""
    return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.local_dc))


def _auth(settings: Settings) -> PlainTextAuthProvider | None:
    if settings.username is None:
        return None
    return PlainTextAuthProvider(username=settings.username, password=settings.password or "")


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


def _by_aggregate(records: Iterable[Record]) -> list[list[Record]]:
    """The records grouped by aggregate, in order of first appearance."""
    groups: dict[UUID, list[Record]] = {}
    for r in records:
        groups.setdefault(r.originator_id, []).append(r)
    return list(groups.values())


def _after(stored: Sequence[UUID], batches: Sequence[Sequence[Record]], message: str) -> str:
    """A save's error message, saying which of the save's aggregates were stored."""
    if len(batches) == 1:
        return message
    later = [str(b[0].originator_id) for b in batches[len(stored) + 1 :]]
    return (
        f"{message} This save had {len(batches)} aggregates; stored before this one: "
        f"{', '.join(map(str, stored)) or 'none'}; not attempted: {', '.join(later) or 'none'}."
    )


def _stored_rows(result: Any) -> list[tuple[int, str, bytes]]:
    """The (version, topic, data) of the rows a conditional write found in its way."""
    names = list(result.column_names)
    at = [names.index(c) for c in ("originator_version", "topic", "data")]
    return [(row[at[0]], row[at[1]], row[at[2]]) for row in result.current_rows]


def _all_ours(existing: Mapping[int, tuple[int, str, bytes]], batch: Sequence[Record]) -> bool:
    return all(
        existing.get(r.originator_version) == (r.originator_version, r.topic, r.data) for r in batch
    )


def _versions(batch: Sequence[Record]) -> str:
    first, last = batch[0].originator_version, batch[-1].originator_version
    return f"version {first}" if len(batch) == 1 else f"versions {first} to {last}"


def _host_errors(exc: NoHostAvailable) -> str:
    errors = getattr(exc, "errors", None) or {}
    return "; ".join(f"{host}: {error}" for host, error in errors.items()) or str(exc)


def _describe(exc: Exception) -> str:
    if isinstance(exc, OperationTimedOut):
        return "no answer within the request timeout"
    if isinstance(exc, ErrorMessage) and exc.code == _CAS_WRITE_UNKNOWN:
        return f"the server could not tell whether the write was applied: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _bytes(value: str | None) -> int | None:
    """A size setting's value ('16MiB', '16384KiB', '16777216B', '50') in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i)?B?\s*", value or "")
    if match is None:
        return None
    scale = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}[match.group(2)]
    return int(match.group(1)) * scale


def _size(n: int) -> str:
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


# -- URL parsing


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


def _parse_hosts(hostlist: str, shown: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in filter(None, (h.strip() for h in hostlist.split(","))):
        match = _HOST.match(item)
        if match is None:
            raise StoreError(f"{shown}: cannot read host {item!r}: write host or host:port")
        port = int(match.group("port") or DEFAULT_PORT)
        hosts.append((match.group("ipv6") or match.group("name"), port))
    if not hosts:
        raise StoreError(f"{shown}: name at least one host: cassandra://host:9042/keyspace")
    return tuple(hosts)


def _parse_replication(value: str | None, shown: str) -> dict[str, int] | None:
    if not value:
        return None
    factors = {}
    for item in value.split(","):
        dc, _, n = item.partition(":")
        if not dc.strip() or not n.strip().isdigit() or int(n) < 1:
            raise StoreError(
                f"{shown}: replication is data centres and replica counts, as "
                f"replication=dc1:3,dc2:3, not {value!r}"
            )
        factors[dc.strip()] = int(n)
    return factors


def _level(name: str, shown: str) -> str:
    level = name.strip().upper()
    if level not in ConsistencyLevel.name_to_value or "SERIAL" in level:
        known = ", ".join(n.lower() for n in ConsistencyLevel.name_to_value if "SERIAL" not in n)
        raise StoreError(f"{shown}: consistency must be one of {known}, not {name!r}")
    return level


def _serial_level(params: Mapping[str, str], local_dc: str | None, shown: str) -> str:
    name = params.get("serial_consistency", "LOCAL_SERIAL" if local_dc else "SERIAL")
    if name.strip().upper() not in ("SERIAL", "LOCAL_SERIAL"):
        raise StoreError(
            f"{shown}: serial_consistency must be serial or local_serial, not {name!r}"
        )
    return name.strip().upper()


def _flag(value: str, name: str, shown: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise StoreError(f"{shown}: {name} must be true or false, not {value!r}")


def _positive_int(params: Mapping[str, str], name: str, shown: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise StoreError(f"{shown}: {name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _seconds(params: Mapping[str, str], name: str, default: float, shown: str) -> float:
    value = params.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise StoreError(f"{shown}: {name} must be a number of seconds above 0, not {value!r}")
    return seconds
