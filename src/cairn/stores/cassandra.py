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
- ``feed=false``: no feed. Saves skip the claim (one Paxos round fewer each)
  and ``read_feed`` raises a StoreError. Events saved with the feed off never
  appear in the feed, even if the keyspace is later used with it on.
- ``feed_fence_after=SECONDS`` (default 5): how old a feed claim whose events
  are still missing must be before a feed reader fences it off (see below).

A save of one aggregate is one ``INSERT ... IF NOT EXISTS`` per event in a
single conditional batch on the aggregate's partition: Paxos applies it whole
or not at all. A save of several aggregates is one such batch per aggregate,
sent together (up to 128 at a time) after one Paxos round has claimed their
feed positions; each is atomic on its own (Cassandra has no multi-partition
transactions), and a :class:`~cairn.ConcurrencyError` lists in ``stored`` the
aggregates stored all the same. An error's class is the least certain outcome
among the aggregates (OutcomeUnknown, then StoreError), and its message names
each.

The feed (``docs/feed.md`` has the whole argument): before its events, each
aggregate's batch CLAIMS the next position of the ``feed`` table, a log whose
``head`` is advanced by Paxos one partition (bucket) at a time, so claims are
numbered without gaps in the order they were made; the batch's events carry
their claim's position. A reader takes claims in order and RESOLVES each from
the aggregate's partition: the events carry the claim's position (emit them),
or the claim's first version holds another batch (the claim lost a race: void),
or it holds nothing yet (the writer is in flight: wait). A claim still empty
after ``feed_fence_after`` seconds is FENCED: the reader writes a no-op record
(topic ``cairn.domain:Fenced``, no data) at that version with Paxos, so the
abandoned writer can never store its batch there (it gets a ConcurrencyError),
and the reader goes on; the fence is in the feed, at the claim's position, like
any stored record. An event's position is its claim's shifted left 16 bits plus
its index in the batch from 1, so a batch holds at most 65,535 events.
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
    ReadTimeout,
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
from cassandra.query import (
    UNSET_VALUE,
    BatchStatement,
    BatchType,
    SimpleStatement,
    Statement,
    tuple_factory,
)

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
        position bigint,
        PRIMARY KEY ((originator_id), originator_version))""",
    """CREATE TABLE IF NOT EXISTS {keyspace}.snapshots (
        originator_id uuid,
        originator_version bigint,
        topic text,
        data blob,
        PRIMARY KEY ((originator_id), originator_version))
        WITH CLUSTERING ORDER BY (originator_version DESC)""",
    # Crypto-shredding: each aggregate's data key, wrapped by the master key;
    # b"" once forgotten. Written only with Paxos.
    """CREATE TABLE IF NOT EXISTS {keyspace}.data_keys (
        originator_id uuid PRIMARY KEY,
        wrapped blob)""",
    # The feed's claims: one row per claimed position, FEED_BUCKET to a
    # partition; `head` is the bucket's next free position, advanced only by
    # Paxos. `abandoned` is a hint from a writer whose events write is known
    # never to have begun; otherwise the events alone say what became of a claim.
    """CREATE TABLE IF NOT EXISTS {keyspace}.feed (
        bucket bigint,
        position bigint,
        head bigint STATIC,
        originator_id uuid,
        originator_version bigint,
        size int,
        abandoned boolean,
        PRIMARY KEY ((bucket), position))""",
)
TABLES = ("events", "snapshots", "data_keys", "feed")
# Keyspaces made before the feed existed: their events table gains the column.
ADD_POSITION = "ALTER TABLE {keyspace}.events ADD position bigint"
# An event's position is its batch's claim; the fence uses the same statement.
INSERT_EVENT = (
    "INSERT INTO {keyspace}.events (originator_id, originator_version, topic, data, position) "
    "VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
)
# A claim of k consecutive positions p..p+k-1 in bucket b: one conditional batch
# on the bucket's partition, CLAIM_HEAD (p+k, b, p, or null for a bucket's first
# claim) and one CLAIM_ROW per position. Not applied: the result carries `head`.
CLAIM_HEAD = "UPDATE {keyspace}.feed SET head = ? WHERE bucket = ? IF head = ?"
CLAIM_ROW = (
    "INSERT INTO {keyspace}.feed (bucket, position, originator_id, originator_version, size) "
    "VALUES (?, ?, ?, ?, ?)"
)
# A plain write, never read by Paxos: only a hint for readers.
ABANDON_CLAIM = "UPDATE {keyspace}.feed SET abandoned = true WHERE bucket = ? AND position = ?"
SELECT_HEAD = "SELECT head FROM {keyspace}.feed WHERE bucket = ? LIMIT 1"
# A claim's age is the coordinator's clock minus the claim's Paxos timestamp:
# server clocks on both sides, never the client's.
SELECT_CLAIMS = (
    "SELECT position, originator_id, originator_version, size, abandoned, "
    "writetime(originator_id), toUnixTimestamp(currentTimestamp()) "
    "FROM {keyspace}.feed WHERE bucket = ? AND position >= ? LIMIT ?"
)
SELECT_CLAIMED = (
    "SELECT originator_version, topic, data, position FROM {keyspace}.events "
    "WHERE originator_id = ? AND originator_version >= ? AND originator_version < ?"
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
SELECT_DATA_KEY = "SELECT wrapped FROM {keyspace}.data_keys WHERE originator_id = ?"
INSERT_DATA_KEY = (
    "INSERT INTO {keyspace}.data_keys (originator_id, wrapped) VALUES (?, ?) IF NOT EXISTS"
)
FORGET_DATA_KEY = "UPDATE {keyspace}.data_keys SET wrapped = 0x WHERE originator_id = ? IF EXISTS"
REPLACE_DATA_KEY = (
    "UPDATE {keyspace}.data_keys SET wrapped = ? WHERE originator_id = ? IF wrapped = ?"
)
# Key rotation's compare-and-set: with Paxos, as every other write of an event row.
REWRITE_EVENT = (
    "UPDATE {keyspace}.events SET data = ? WHERE originator_id = ? AND originator_version = ? "
    "IF data = ?"
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

# The feed's layout: part of the stored format, the same for every process
# that opens a keyspace (bucket = position // FEED_BUCKET).
FEED_BUCKET = 100_000
INDEX_BITS = 16  # an event's position: claim << INDEX_BITS | (index in batch + 1)
MAX_FEED_BATCH = (1 << INDEX_BITS) - 1
# The topic of a fence: cairn.domain.Fenced's (a store does not import the domain).
FENCE_TOPIC = "cairn.domain:Fenced"
CLAIMS_PER_WRITE = 100  # claims of concurrent saves in one process, combined in one Paxos round
CLAIM_ATTEMPTS = 1000  # Paxos rounds a claim may lose to other writers before giving up
CLAIM_RETRIES = 2  # a claim that failed (timeout, overload) is tried again this often
CLAIMS_PER_READ = 100  # claims a feed reader fetches (and resolves concurrently) per query
WRITES_IN_FLIGHT = 128  # a save's batches sent at once, at most: a larger save goes in waves
DEFAULT_FENCE_AFTER = 5.0

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
    "feed",
    "feed_fence_after",
)
DEFAULT_PORT = 9042
SCHEMA_WAIT = 30.0  # seconds for the nodes to agree on (and serve) a new table
WRITE_PROFILE = "cairn-write"
_KEYSPACE_NAME = re.compile(r"[A-Za-z0-9_]{1,48}")
_HOST = re.compile(r"^(?:\[(?P<ipv6>[^\]]+)\]|(?P<name>[^:\[\]]+))(?::(?P<port>\d+))?$")
_MAX_VERSION = 2**63 - 1
_SCHEMA_SETTLING = re.compile(
    r"does not exist|doesn't exist|unconfigured table|Unknown CF|INCOMPATIBLE_SCHEMA", re.I
)
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
    feed: bool = True
    feed_fence_after: float = DEFAULT_FENCE_AFTER

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
        feed=_flag(params.get("feed", "true"), "feed", shown),
        feed_fence_after=_seconds(params, "feed_fence_after", DEFAULT_FENCE_AFTER, shown),
    )


class CassandraRecorder(Recorder):
    """A keyspace with an events table and a snapshots table, one partition per aggregate,
    and the feed's claims table.

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
        self._bucket = FEED_BUCKET
        self._claims = _Claims(os.getpid())
        connection = self._connect()
        try:
            _settled(lambda: self._ensure_schema(connection))
            _settled(lambda: self._check_replicas(connection))
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
                    # A claim in flight in the parent's threads is not ours.
                    self._claims = _Claims(os.getpid(), self._claims.next_position)
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
        if missing == _NO_POSITION:
            self._add_position(connection)
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
        if self._missing(connection) == _NO_POSITION:
            self._add_position(connection)

    def _check_replicas(self, connection: _Connection) -> None:
        """Read each table once from every replica, so that none is used before every
        node serves it: schema agreement says the nodes have the same schema version,
        yet a replica can refuse a table made a moment ago (INCOMPATIBLE_SCHEMA). A
        node that is down or slow is not waited for."""
        for table in TABLES:
            query = SimpleStatement(
                f"SELECT * FROM {self._keyspace}.{table} LIMIT 1",
                consistency_level=ConsistencyLevel.ALL,
            )
            try:
                connection.session.execute(query, timeout=SCHEMA_WAIT)
            except (Unavailable, ReadTimeout, OperationTimedOut):
                return  # a node down or slow: it learns the schema when it is back
            except _DRIVER_ERRORS as exc:
                raise StoreError(f"{self.url}: cannot read table {table}: {exc}") from exc

    def _missing(self, connection: _Connection) -> str | None:
        """The keyspace or first table (or column) that does not exist yet, in words, or None."""
        keyspace = connection.cluster.metadata.keyspaces.get(self.settings.keyspace)
        if keyspace is None:
            return f"keyspace {self.settings.keyspace!r}"
        for table in TABLES:
            if table not in keyspace.tables:
                return f"table {self.settings.keyspace}.{table}"
        if "position" not in keyspace.tables["events"].columns:
            return _NO_POSITION
        return None

    def _add_position(self, connection: _Connection) -> None:
        """Give an events table made before the feed its ``position`` column."""
        if not self.settings.create:
            raise StoreError(
                f"{self.url}: table {self.settings.keyspace}.events has no position column "
                "(it predates the feed) and create=false; open it once without create=false "
                "to let cairn add it"
            )
        try:
            connection.session.execute(ADD_POSITION.format(keyspace=self._keyspace), timeout=60)
        except _DRIVER_ERRORS as exc:
            if "conflicts with an existing column" not in str(exc):  # another process added it
                raise StoreError(f"{self.url}: cannot add the events' position: {exc}") from exc

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
                rewrite_event=session.prepare(REWRITE_EVENT.format(keyspace=ks)),
                select_data_key=session.prepare(SELECT_DATA_KEY.format(keyspace=ks)),
                insert_data_key=session.prepare(INSERT_DATA_KEY.format(keyspace=ks)),
                forget_data_key=session.prepare(FORGET_DATA_KEY.format(keyspace=ks)),
                replace_data_key=session.prepare(REPLACE_DATA_KEY.format(keyspace=ks)),
                claim_head=session.prepare(CLAIM_HEAD.format(keyspace=ks)),
                claim_row=session.prepare(CLAIM_ROW.format(keyspace=ks)),
                abandon_claim=session.prepare(ABANDON_CLAIM.format(keyspace=ks)),
                select_head=session.prepare(SELECT_HEAD.format(keyspace=ks)),
                select_claims=session.prepare(SELECT_CLAIMS.format(keyspace=ks)),
                select_claimed=session.prepare(SELECT_CLAIMED.format(keyspace=ks)),
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
        """Store each aggregate's batch as one conditional write: sent together, in
        waves of WRITES_IN_FLIGHT (after one Paxos round claims their feed positions),
        each whole or not at all. A refusal names the aggregates stored all the same."""
        batches = _by_aggregate(records)
        for batch in batches:  # check every batch before writing any
            self._check(batch)
        # Claimed first, so that a claim is older than its events: a reader that
        # finds a claim's events missing knows they are in flight, or never coming.
        positions = self._claim(batches) if self.settings.feed else [None] * len(batches)
        errors: list[ConcurrencyError | StoreError | None] = []
        for start in range(0, len(batches), WRITES_IN_FLIGHT):
            wave = range(start, min(start + WRITES_IN_FLIGHT, len(batches)))
            sent = [self._send(batches[i], positions[i]) for i in wave]
            errors += [
                self._outcome(batches[i], positions[i], f) for i, f in zip(wave, sent, strict=True)
            ]
        failed = [(batch, e) for batch, e in zip(batches, errors, strict=True) if e is not None]
        if failed:
            refusal = _refusal(batches, failed)
            raise refusal from refusal.__cause__ or failed[0][1].__cause__

    def _check(self, batch: Sequence[Record]) -> None:
        """Refuse, before anything is sent, a batch that repeats a version or is too large."""
        seen: set[int] = set()
        for r in batch:
            if r.originator_version in seen:
                raise ConcurrencyError(
                    f"aggregate {r.originator_id}: the batch repeats version {r.originator_version}"
                )
            seen.add(r.originator_version)
        if self.settings.feed and _span(batch) > MAX_FEED_BATCH:
            raise StoreError(
                f"{self.url}: aggregate {batch[0].originator_id}: the batch of {len(batch)} "
                f"events spans {_span(batch)} versions; with the feed on, a save holds at most "
                f"{MAX_FEED_BATCH} events of one aggregate (an event's feed position has 16 "
                "bits for its place in its batch). Save in smaller batches. Nothing was written."
            )
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

    def _send(self, batch: Sequence[Record], position: int | None) -> Any:
        """The batch's conditional write, sent: its future, or the error that kept it
        from leaving (then it is not stored)."""
        statement = self._statement(batch, UNSET_VALUE if position is None else position)
        try:
            return self._session().execute_async(statement, execution_profile=WRITE_PROFILE)
        except _DRIVER_ERRORS as exc:
            return exc

    def _outcome(
        self, batch: Sequence[Record], position: int | None, sent: Any
    ) -> ConcurrencyError | StoreError | None:
        """None if the batch's conditional write stored it, else the error that says
        what became of it: refused (ConcurrencyError), not stored, or unknown."""
        try:
            if isinstance(sent, Exception):
                raise sent
            result = sent.result()
        except _DRIVER_ERRORS as exc:
            if position is not None and _not_stored(exc):
                self._abandon(position)  # readers need not wait to void it
            error = self._write_error(exc, batch)
            error.__cause__ = exc
            return error
        if result.was_applied:
            return None
        existing = {row[0]: row for row in _stored_rows(result)}
        if _all_ours(existing, batch):
            # Our own write, completed by a later Paxos round that then found its
            # condition false (or stored by a save repeated after OutcomeUnknown):
            # it is stored, whole, at the position it was first written with.
            return None
        versions = sorted(v for v in existing if v in {r.originator_version for r in batch})
        version = versions[0] if versions else batch[0].originator_version
        fenced = existing.get(version, (0, ""))[1] == FENCE_TOPIC
        if fenced and _stored_position(result, version) == position:
            return ConcurrencyError(
                f"aggregate {batch[0].originator_id}: version {version} was fenced off by a "
                f"feed reader, this save having taken longer than feed_fence_after "
                f"({self.settings.feed_fence_after:g} s) since it claimed its feed position; "
                f"nothing of the batch of {_versions(batch)} was stored. Reload the aggregate "
                "and try again."
            )
        return ConcurrencyError(
            f"aggregate {batch[0].originator_id}: version {version} is already stored "
            f"(stale writer?); nothing of the batch of {_versions(batch)} was stored"
        )

    def _statement(self, batch: Sequence[Record], position: Any) -> Statement:
        insert = self._statements.insert_event
        if len(batch) == 1:
            r = batch[0]
            return insert.bind((r.originator_id, r.originator_version, r.topic, r.data, position))
        statement = BatchStatement(batch_type=BatchType.LOGGED)
        for r in batch:
            statement.add(
                insert, (r.originator_id, r.originator_version, r.topic, r.data, position)
            )
        return statement

    # -- the feed: claims

    def _claim(self, batches: Sequence[Sequence[Record]]) -> list[int]:
        """The feed positions claimed for these batches (combined with the claims of
        other threads' saves in flight), or StoreError: none of them was stored."""
        requests = [
            _Claim(b[0].originator_id, min(r.originator_version for r in b), _span(b))
            for b in batches
        ]
        claims = self._claims
        with claims.ready:
            claims.queue.extend(requests)
        while True:
            with claims.ready:
                while claims.leading and _waiting(requests):
                    claims.ready.wait()
                failure = next((r.error for r in requests if r.error is not None), None)
                if failure is not None:
                    raise StoreError(
                        f"{self.url}: {_what(batches)} was not stored: {failure}"
                    ) from failure.__cause__
                if not _waiting(requests):
                    return [r.position for r in requests]  # type: ignore[misc]
                # Nobody leads and ours are still queued: lead (they may not all be in this group).
                claims.leading = True
                group = claims.queue[:CLAIMS_PER_WRITE]
                del claims.queue[: len(group)]
            try:
                self._claim_group(group)
            except BaseException as exc:
                for r in group:
                    if r.position is None:
                        r.error = exc
            finally:
                with claims.ready:
                    claims.leading = False
                    claims.ready.notify_all()

    def _claim_group(self, group: list[_Claim]) -> None:
        """Claim consecutive positions for the group, in one Paxos round per bucket it
        touches (and one more per round another writer won)."""
        session = self._session()
        claims = self._claims
        position = claims.next_position
        if position is None:
            position = self._find_head()
        attempts = failures = 0
        pending = group
        while pending:
            bucket = position // self._bucket
            take = pending[: (bucket + 1) * self._bucket - position]
            statement = BatchStatement(batch_type=BatchType.UNLOGGED)
            expected = None if position % self._bucket == 0 else position
            statement.add(self._statements.claim_head, (position + len(take), bucket, expected))
            for n, r in enumerate(take):
                row = (bucket, position + n, r.originator_id, r.originator_version, r.size)
                statement.add(self._statements.claim_row, row)
            try:
                result = session.execute(statement)
            except _DRIVER_ERRORS as exc:
                # Nothing of the batches is written yet, so retrying is safe: a claim
                # that was in fact made is left without events, and readers void or
                # fence it like any abandoned claim.
                failures += 1
                if failures > CLAIM_RETRIES or isinstance(exc, NoHostAvailable):
                    claims.next_position = None
                    raise StoreError(f"cannot claim its feed position ({_describe(exc)})") from exc
                continue
            if result.was_applied:
                for n, r in enumerate(take):
                    r.position = position + n
                pending = pending[len(take) :]
                position += len(take)
                claims.next_position = position
                continue
            attempts += 1
            if attempts >= CLAIM_ATTEMPTS:
                claims.next_position = None
                raise StoreError(
                    f"{attempts} attempts to claim a feed position all lost to other writers"
                )
            head = _column(result, "head")
            # No head: the guess named a bucket not begun yet; look for the real one.
            position = self._find_head() if head is None else head

    def _find_head(self) -> int:
        """The feed's next free position, as far as a read can tell (Paxos checks it).

        Buckets are begun in order and never removed: double the bucket number until
        one does not exist, then halve the gap: O(log n) reads.
        """

        def head_of(bucket: int) -> int | None:
            try:
                row = self._session().execute(self._statements.select_head, (bucket,)).one()
            except _DRIVER_ERRORS as exc:
                raise StoreError(
                    f"cannot claim its feed position: cannot read the feed's head ({exc})"
                ) from exc
            return None if row is None else row[0]

        if head_of(0) is None:
            return 0
        low, high = 0, 1
        while head_of(high) is not None:
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if head_of(middle) is None:
                high = middle
            else:
                low = middle
        return head_of(low) or low * self._bucket

    def _abandon(self, position: int) -> None:
        """Say on a claim that its events were never written, so that readers void it
        at once instead of fencing it later. Sent without waiting: only a hint."""
        params = (position // self._bucket, position)
        try:
            future = self._session().execute_async(self._statements.abandon_claim, params)
        except _DRIVER_ERRORS as exc:
            log.debug("%s: no hint on feed claim %d: %s", self.url, position, exc)
            return
        future.add_errback(
            lambda exc: log.debug("%s: no hint on feed claim %d: %s", self.url, position, exc)
        )

    # -- the feed: reading

    def read_feed(self, after: int = 0, limit: int = 1000) -> list[Record]:
        """At most ``limit`` event records after position ``after``, in feed order.

        Claims are taken in position order and each resolved before the next: its
        events (emitted), void, or fenced once older than ``feed_fence_after``. The
        page ends early at a claim still in flight, so nothing is ever returned past
        a claim that could yet be stored.
        """
        if not self.settings.feed:
            raise StoreError(
                f"{self.url}: the feed is off for this store (feed=false in its URL); "
                "events saved with it off are not in the feed"
            )
        after = max(after, 0)
        claim = after >> INDEX_BITS  # the claim of the position, whose later events are due
        found: list[Record] = []
        while len(found) < limit:
            rows, complete = self._read_claims(claim, min(CLAIMS_PER_READ, limit - len(found) + 1))
            # Fetch only the claims whose events can fill the page: memory stays bounded
            # by the page, however large the batches.
            wanted, events_due = 0, 0
            while wanted < len(rows) and events_due < limit - len(found):
                events_due += rows[wanted].size
                wanted += 1
            if wanted < len(rows):
                rows, complete = rows[:wanted], True
            events = [self._read_claimed(row) for row in rows]  # all in flight at once
            for row, future in zip(rows, events, strict=True):
                records = self._resolve(row, future)
                if records is None:
                    return found  # a claim in flight: nothing may pass it
                found += [r for r in records if r.position > after]  # type: ignore[operator]
                claim += 1
                if len(found) >= limit:
                    return found[:limit]
            if not complete:
                return found  # the newest claim (or one not visible yet) was reached
        return found[:limit]

    def _read_claims(self, first: int, limit: int) -> tuple[list[_ClaimRow], bool]:
        """Up to ``limit`` consecutive claims from ``first`` within its bucket (they stop at
        the first position not visible yet), and whether that many were there."""
        bucket = first // self._bucket
        limit = min(limit, (bucket + 1) * self._bucket - first)
        statement = self._statements.select_claims.bind((bucket, first, limit))
        statement.fetch_size = limit
        try:
            rows = self._session().execute(statement).current_rows
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc
        claims = []
        for n, row in enumerate(rows):
            if row[0] != first + n:
                break  # a gap: claim first + n is made but not visible here yet
            claims.append(_ClaimRow(*row))
        rows.clear()  # let the response go now (see select_page)
        return claims, len(claims) == limit

    def _read_claimed(self, claim: _ClaimRow, serial: bool = False) -> Any:
        """The request for the versions a claim names, sent (its future)."""
        statement = self._statements.select_claimed.bind(
            (claim.originator_id, claim.originator_version, claim.originator_version + claim.size)
        )
        if serial:
            # Through Paxos: completes any write in progress on the partition first.
            statement.consistency_level = ConsistencyLevel.name_to_value[
                self.settings.serial_consistency
            ]
        try:
            return self._session().execute_async(statement)
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc

    def _resolve(self, claim: _ClaimRow, future: Any) -> list[Record] | None:
        """A claim's records, [] for a void claim, or None while it may yet be stored."""
        records = self._claimed(claim, future)
        if records is not None:
            return records
        if claim.abandoned:
            # Its writer knows its write never began (and claims anew to retry).
            return []
        if claim.now * 1000 - claim.written < self._fence_after:
            return None  # young: its writer is most likely still at work
        self._fence(claim)
        # Fenced, or the batch is there (Paxos completed it first): read through Paxos,
        # which sees what the fence saw even below QUORUM.
        return self._claimed(claim, self._read_claimed(claim, serial=True))

    def _claimed(self, claim: _ClaimRow, future: Any) -> list[Record] | None:
        try:
            rows = future.result()
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc
        first = claim.originator_version
        stored = {v: (t, d, p) for v, t, d, p in rows.current_rows}
        # The future and its (cancelled) timeout timer refer to each other: a cycle
        # only the cyclic garbage collector frees, rarely, so that memory would grow
        # with the feed read. Breaking it lets each claim's request go at once.
        rows.current_rows.clear()
        future._timer = None
        if first not in stored:
            return None
        if stored[first][2] != claim.position:
            return []  # another batch holds the version: this claim lost its race
        base = claim.position << INDEX_BITS
        return [
            Record(claim.originator_id, v, t, d, base + v - first + 1)
            for v, (t, d, p) in sorted(stored.items())
            if p == claim.position
        ]

    @property
    def _fence_after(self) -> float:
        return self.settings.feed_fence_after * 1_000_000  # microseconds

    def _fence(self, claim: _ClaimRow) -> None:
        """Fence off an abandoned claim: a no-op record at its first version, with Paxos.

        Paxos first completes any write of the claim's batch still in progress; then
        either the batch is there (the insert is not applied) or the fence is, and the
        batch's writer can never store it (its insert is not applied: ConcurrencyError).
        """
        row = (claim.originator_id, claim.originator_version, FENCE_TOPIC, b"", claim.position)
        try:
            self._session().execute(self._statements.insert_event, row)
        except _DRIVER_ERRORS as exc:
            raise StoreError(
                f"{self.url}: cannot read the feed past position {claim.position}: its claim "
                f"(aggregate {claim.originator_id} version {claim.originator_version}) is "
                f"abandoned, and fencing it off failed: {_describe(exc)}"
            ) from exc
        log.info(
            "%s: fenced off feed claim %d (aggregate %s version %d), abandoned for %.1f s",
            self.url,
            claim.position,
            claim.originator_id,
            claim.originator_version,
            (claim.now * 1000 - claim.written) / 1e6,
        )

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

    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        """Each aggregate's changes as one conditional batch (one Paxos round); if any
        record changed meanwhile, that aggregate's changes one at a time."""
        groups: dict[UUID, list[tuple[Record, Record]]] = {}
        for old, new in changes:
            groups.setdefault(old.originator_id, []).append((old, new))
        statement = self._statements.rewrite_event
        replaced = 0
        try:
            for group in groups.values():
                rows = [
                    (new.data, old.originator_id, old.originator_version, old.data)
                    for old, new in group
                ]
                if len(rows) > 1:
                    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                    for row in rows:
                        batch.add(statement, row)
                    if self._session().execute(batch).was_applied:
                        replaced += len(rows)
                        continue
                for row in rows:
                    replaced += bool(self._session().execute(statement, row).was_applied)
        except _DRIVER_ERRORS as exc:
            raise StoreError(
                f"{self.url}: {replaced} events rewritten, then: {_describe(exc)} "
                "(a rewrite is a compare-and-set: run it again)"
            ) from exc
        return replaced

    # -- data keys (crypto-shredding)

    def get_data_key(self, originator_id: UUID) -> bytes | None:
        failure = f"cannot read the data key of {originator_id}"
        row = self._execute(self._statements.select_data_key, (originator_id,), failure).one()
        return None if row is None else bytes(row[0] or b"")

    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        failure = f"cannot store the data key of {originator_id}"
        result = self._execute(self._statements.insert_data_key, (originator_id, wrapped), failure)
        if result.was_applied:
            return wrapped
        return bytes(_column(result, "wrapped") or b"")  # another writer's (or a tombstone)

    def forget_data_key(self, originator_id: UUID) -> None:
        """A tombstone (``b""``), with Paxos so that no concurrent put can outlive it."""
        session = self._session()
        try:
            inserted = session.execute(self._statements.insert_data_key, (originator_id, b""))
            if not inserted.was_applied:
                session.execute(self._statements.forget_data_key, (originator_id,))
        except _DRIVER_ERRORS as exc:
            raise StoreError(
                f"{self.url}: cannot forget the data key of {originator_id}: {exc}"
            ) from exc

    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        if not old:  # a tombstone is never replaced
            return False
        failure = f"cannot replace the data key of {originator_id}"
        result = self._execute(
            self._statements.replace_data_key, (new, originator_id, old), failure
        )
        return bool(result.was_applied)

    # -- snapshots

    def put_snapshot(self, record: Record) -> None:
        row = (record.originator_id, record.originator_version, record.topic, record.data)
        failure = (
            f"the snapshot of {record.originator_id} at version "
            f"{record.originator_version} was not stored"
        )
        self._execute(self._statements.insert_snapshot, row, failure)

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        params = (originator_id, _MAX_VERSION if lte is None else lte)
        failure = f"cannot read snapshots of {originator_id}"
        row = self._execute(self._statements.select_snapshot, params, failure).one()
        return None if row is None else Record(originator_id, row[0], row[1], row[2])

    def _execute(self, statement: Any, params: tuple[object, ...], failure: str) -> Any:
        """The statement's result; a driver error becomes a StoreError saying ``failure``."""
        try:
            return self._session().execute(statement, params)
        except _DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: {failure}: {exc}") from exc

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
    rewrite_event: Any
    select_data_key: Any
    insert_data_key: Any
    forget_data_key: Any
    replace_data_key: Any
    claim_head: Any
    claim_row: Any
    abandon_claim: Any
    select_head: Any
    select_claims: Any
    select_claimed: Any


@dataclass
class _Claim:
    """One aggregate batch waiting for a feed position (or an error) from the claimer."""

    originator_id: UUID
    originator_version: int  # the batch's lowest
    size: int  # the versions the batch spans (its number of events, when they follow on)
    position: int | None = None
    error: BaseException | None = None


class _Claims:
    """A process's claims in progress: concurrent saves queue here, and one of them at a
    time (the leader) claims positions for all queued so far in one Paxos round, so that
    threads of one process never compete with each other for the feed's head."""

    def __init__(self, pid: int, next_position: int | None = None) -> None:
        self.pid = pid
        self.ready = threading.Condition()
        self.queue: list[_Claim] = []
        self.leading = False
        self.next_position = next_position  # a guess of the head: Paxos checks it


@dataclass(frozen=True)
class _ClaimRow:
    position: int
    originator_id: UUID
    originator_version: int
    size: int
    abandoned: bool | None
    written: int  # the claim's Paxos timestamp, microseconds
    now: int  # the reading coordinator's clock, milliseconds


_NO_POSITION = "the events' position column"

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


def _waiting(requests: Sequence[_Claim]) -> bool:
    """Whether some of these claims have neither a position nor an error yet."""
    return any(r.position is None and r.error is None for r in requests)


def _what(batches: Sequence[Sequence[Record]]) -> str:
    """A save in words: its one aggregate's batch, or how many aggregates it had."""
    if len(batches) == 1:
        return f"aggregate {batches[0][0].originator_id}: the batch of {_versions(batches[0])}"
    ids = ", ".join(str(b[0].originator_id) for b in batches)
    return f"the save of {len(batches)} aggregates ({ids})"


def _refusal(
    batches: Sequence[Sequence[Record]],
    failed: Sequence[tuple[Sequence[Record], ConcurrencyError | StoreError]],
) -> ConcurrencyError | StoreError:
    """One error for a save some of whose batches were not stored (or may not be).

    Its class is the least certain outcome among them: OutcomeUnknown, else a
    StoreError, else ConcurrencyError, which then lists the aggregates stored."""
    first = failed[0][1]
    if len(batches) == 1:
        return first
    errors = [e for _, e in failed]
    not_stored = {b[0].originator_id for b, _ in failed}
    stored = [b[0].originator_id for b in batches if b[0].originator_id not in not_stored]
    message = (
        f"{first} This save had {len(batches)} aggregates, written at once; "
        f"stored: {', '.join(map(str, stored)) or 'none'}; "
        + "; ".join(f"{b[0].originator_id}: {type(e).__name__}" for b, e in failed)
        + "."
    )
    if any(isinstance(e, OutcomeUnknown) for e in errors):
        return OutcomeUnknown(message)
    if not all(isinstance(e, ConcurrencyError) for e in errors):
        return StoreError(message)
    return ConcurrencyError(message, stored)


def _stored_rows(result: Any) -> list[tuple[int, str, bytes]]:
    """The (version, topic, data) of the rows a conditional write found in its way."""
    names = list(result.column_names)
    at = [names.index(c) for c in ("originator_version", "topic", "data")]
    return [(row[at[0]], row[at[1]], row[at[2]]) for row in result.current_rows]


def _stored_position(result: Any, version: int) -> int | None:
    """The feed position of the row at ``version`` a conditional write found in its way."""
    names = list(result.column_names)
    if "position" not in names:
        return None
    at, position = names.index("originator_version"), names.index("position")
    return next((row[position] for row in result.current_rows if row[at] == version), None)


def _all_ours(existing: Mapping[int, tuple[int, str, bytes]], batch: Sequence[Record]) -> bool:
    return all(
        existing.get(r.originator_version) == (r.originator_version, r.topic, r.data) for r in batch
    )


def _span(batch: Sequence[Record]) -> int:
    """The versions a batch spans: its number of events, when they follow on."""
    versions = [r.originator_version for r in batch]
    return max(versions) - min(versions) + 1


def _column(result: Any, name: str) -> Any:
    """A column of the row a conditional write that was not applied returns."""
    names = list(result.column_names)
    rows = result.current_rows
    return rows[0][names.index(name)] if rows and name in names else None


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
