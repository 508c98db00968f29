"""The PostgreSQL store: for teams that already run PostgreSQL. psycopg 3 and a connection pool.

URL: ``postgresql://user:password@host:port/database?schema=name``. Any part left
out comes from libpq's ``PG*`` environment variables (``PGHOST``, ``PGPORT``,
``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``...) or ``~/.pgpass``, so
``postgresql://?schema=name`` is a whole URL. cairn's own query parameters:

- ``schema=NAME`` (default ``public``): where the tables live. Left out, the store says
  so: it logs a warning (once per URL and process), and the URL in its messages (and
  its ``url``) ends ``schema=public``, so that no one mistakes whose tables they are;
- ``create=false``: never create the schema or its tables, nor widen a table made
  with 32-bit versions (a missing or narrow one is an error);
- ``pool_min=N``, ``pool_max=N`` (default 1 and 10): connections kept open, and at most;
- ``pool_timeout=SECONDS`` (default 30): how long an operation waits for a free connection.

Every other parameter must be one of libpq's (``sslmode``, ``connect_timeout``,
``application_name``...), and goes to libpq as it is.

A save is one transaction, checked by the primary key (originator id, version): a
collision is a ConcurrencyError and nothing of the batch is stored. A small save (up to
``MULTI_ROW_MAX`` events, not a process's reaction) is one statement, its own transaction,
in one round trip: a connection lost once it was sent is OutcomeUnknown (it may or may
not be stored: re-read to know). A larger save is BEGIN, the rows, COMMIT: a connection
lost before COMMIT is a StoreError (the batch was not stored); lost during COMMIT, it is
OutcomeUnknown.

A pooled connection left unused for more than ``IDLE_CHECK`` seconds is checked
(an empty query) before it is lent, so that the first operation after a quiet spell
does not fail on a connection a server restart has closed.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode
from uuid import UUID
from weakref import WeakKeyDictionary

import psycopg
from psycopg import errors, pq, sql
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from cairn.errors import AlreadyProcessed, OutcomeUnknown, StoreError
from cairn.renamed import module_aliases
from cairn.stores.contract import (
    MAX_VERSION,
    Appended,
    FeedPage,
    Record,
    RecordFields,
    Store,
    Tracking,
    aggregate_id,
    as_record,
    check_ids,
)
from cairn.stores.failures import DriverErrors, already_processed, refusal
from cairn.stores.urls import Options, redact

# All of the store's SQL, in one place. {schema} is the schema's quoted name.
SELECT_SCHEMA = "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)"
# The tables, each with the type of its originator_version column (if it has one).
SELECT_TABLES = (
    "SELECT c.relname, format_type(a.atttypid, a.atttypmod) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'originator_version' "
    "WHERE n.nspname = %s AND c.relname IN ('events', 'snapshots', 'data_keys', 'tracking')"
)
# Two processes running CREATE ... IF NOT EXISTS at once can still collide in the
# catalogs (UniqueViolation on pg_type): those creating one schema queue on this lock.
TABLES = ("events", "snapshots", "data_keys")
# Made since process applications: a schema made before has none, and opens without it.
OPTIONAL_TABLES = ("tracking",)
LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"
CREATE_TABLES = (
    """CREATE TABLE IF NOT EXISTS {schema}.events (
        position bigint NOT NULL,
        originator_id uuid NOT NULL,
        originator_version bigint NOT NULL,
        topic text NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (originator_id, originator_version))""",
    """CREATE TABLE IF NOT EXISTS {schema}.snapshots (
        originator_id uuid NOT NULL,
        originator_version bigint NOT NULL,
        topic text NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (originator_id, originator_version))""",
    """CREATE TABLE IF NOT EXISTS {schema}.data_keys (
        originator_id uuid PRIMARY KEY,
        wrapped bytea NOT NULL)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_feed ON {schema}.events (position)",
    # What a process application has processed of each upstream (docs/processes.md).
    """CREATE TABLE IF NOT EXISTS {schema}.tracking (
        upstream text PRIMARY KEY,
        position bigint NOT NULL)""",
    # One entry per aggregate (its first event), for listing aggregates.
    """CREATE INDEX IF NOT EXISTS events_aggregates ON {schema}.events (originator_id)
        WHERE originator_version = 0""",
)
# Tables made when versions were 32-bit integers take 64-bit ones, as every store's.
WIDEN_VERSION = "ALTER TABLE {schema}.{table} ALTER COLUMN originator_version TYPE bigint"
VERSIONED = ("events", "snapshots")
# The feed. Sequence numbers are taken in one order and committed in another, so
# a position is the writing transaction's id (xid8, 64-bit, never reused) shifted
# left 20 bits, plus the event's index in its batch; readers read only below the
# oldest transaction still running (the snapshot's xmin). Everything below it
# has committed or aborted, and every later commit has a larger transaction id:
# no event can appear behind a reader, and no writer waits on another.
TXID_BITS = 20  # so a batch holds at most 2**20 - 1 events
TXID_POSITION = f"(pg_current_xact_id()::text::bigint << {TXID_BITS})"
# Answers the batch's base position (its first event's), one row however many it inserts.
INSERT_EVENTS = (
    "WITH batch AS (INSERT INTO {schema}.events "
    "(originator_id, originator_version, topic, data, position) VALUES {rows} "
    "RETURNING position) SELECT min(position) FROM batch"
)
EVENT_ROW = f"(%s, %s, %s, %s, {TXID_POSITION} + %s)"
SELECT_TXID_POSITION = f"SELECT {TXID_POSITION}"
COPY_EVENTS = (
    "COPY {schema}.events (originator_id, originator_version, topic, data, position) "
    "FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ("uuid", "int8", "text", "bytea", "int8")
# The page is cut at the snapshot's xmin outside the LIMIT subquery: as two
# bounds on one column, the planner estimates a range without statistics
# (a new table, before autovacuum's first ANALYZE) at 0.5% of the rows, and
# then reads and sorts every row after `after` for each page. One bound is
# always an ordered index scan that stops after `limit` rows.
# The horizon is a subquery, computed once (an InitPlan), not a filter computed per row.
# Its columns are in Record's order (see as_record).
SELECT_FEED = (
    "SELECT originator_id, originator_version, topic, data, position FROM ("
    "SELECT position, originator_id, originator_version, topic, data FROM {schema}.events "
    "WHERE position > %s ORDER BY position LIMIT %s) page "
    f"WHERE position < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {TXID_BITS}) "
    "ORDER BY position"
)
# Filtered by topic, the same page, and beside it ``seen``: the last event below the
# horizon, which a short page has looked at (and past) in full. It is an event's
# position, so that it moves only when events are stored (xmin moves with every
# transaction of the server). A LEFT JOIN, so that an empty page still says it.
SELECT_FEED_OF_TOPICS = (
    "SELECT h.seen, p.position, p.originator_id, p.originator_version, p.topic, p.data FROM ("
    "SELECT (SELECT max(position) FROM {schema}.events WHERE position < x.horizon) AS seen "
    f"FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {TXID_BITS} "
    "AS horizon) x) h LEFT JOIN ("
    "SELECT position, originator_id, originator_version, topic, data FROM {schema}.events "
    "WHERE position > %s AND topic = ANY(%s) ORDER BY position LIMIT %s) p "
    "ON p.position <= h.seen ORDER BY p.position"
)
SELECT_IDS = (
    "SELECT originator_id FROM {schema}.events WHERE originator_version = 0 "
    "AND originator_id > %s ORDER BY originator_id LIMIT %s"
)
SELECT_EVENTS = (
    "SELECT originator_version, topic, data FROM {schema}.events WHERE originator_id = %s "
    "AND originator_version > %s AND originator_version <= %s "
    "ORDER BY originator_version {order} LIMIT %s"
)
SELECT_STORED_VERSION = (
    "SELECT min(originator_version) FROM {schema}.events "
    "WHERE originator_id = %s AND originator_version = ANY(%s)"
)
REWRITE_EVENT = (
    "UPDATE {schema}.events SET topic = %s, data = %s WHERE originator_id = %s "
    "AND originator_version = %s AND topic = %s AND data = %s"
)
# A tracked position only ever increases. In a reaction's transaction, it is written
# first: a second runner's transaction waits on the row until the first commits, then
# finds the position not past it, changes nothing (rowcount 0), and is rolled back.
TRACK = (
    "INSERT INTO {schema}.tracking AS t (upstream, position) VALUES (%s, %s) "
    "ON CONFLICT (upstream) DO UPDATE SET position = EXCLUDED.position "
    "WHERE t.position < EXCLUDED.position"
)
SELECT_TRACKED = "SELECT position FROM {schema}.tracking WHERE upstream = %s"
SELECT_DATA_KEY = "SELECT wrapped FROM {schema}.data_keys WHERE originator_id = %s"
INSERT_DATA_KEY = (
    "INSERT INTO {schema}.data_keys (originator_id, wrapped) VALUES (%s, %s) "
    "ON CONFLICT (originator_id) DO NOTHING"
)
FORGET_DATA_KEY = (
    "INSERT INTO {schema}.data_keys (originator_id, wrapped) VALUES (%s, '') "
    "ON CONFLICT (originator_id) DO UPDATE SET wrapped = ''"
)
REPLACE_DATA_KEY = (
    "UPDATE {schema}.data_keys SET wrapped = %s WHERE originator_id = %s AND wrapped = %s"
)
UPSERT_SNAPSHOT = (
    "INSERT INTO {schema}.snapshots (originator_id, originator_version, topic, data) "
    "VALUES (%s, %s, %s, %s) ON CONFLICT (originator_id, originator_version) "
    "DO UPDATE SET topic = EXCLUDED.topic, data = EXCLUDED.data"
)
SELECT_SNAPSHOT = (
    "SELECT originator_version, topic, data FROM {schema}.snapshots WHERE originator_id = %s "
    "AND originator_version <= %s ORDER BY originator_version DESC LIMIT 1"
)

# Followers LISTEN on the store's channel; the notifier NOTIFYs it after saves.
NOTIFY = "SELECT pg_notify(%s, '')"
NOTIFY_EVERY = 0.005  # seconds: at most one NOTIFY this often, for all the saves since

# Batches up to this size are one multi-row INSERT, larger ones a binary COPY: each
# is the fastest on its side (PostgreSQL 15 on loopback, events/s: 10-event batches
# INSERT 28k, COPY 24k, executemany 23k; 1000-event batches COPY 212k, INSERT 90k,
# executemany 85k; INSERT and COPY cross near 15 events).
MULTI_ROW_MAX = 16
DEFAULT_SCHEMA = "public"
log = logging.getLogger(__name__)
_told_default_schema: set[str] = set()  # URLs whose default schema was logged
OPTIONS = ("schema", "create", "pool_min", "pool_max", "pool_timeout")
LIBPQ_PARAMS = frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())
CONNECT_TIMEOUT = 10  # seconds; libpq would wait forever, psycopg 130 s
IDLE_CHECK = 5.0  # seconds unused after which a pooled connection is checked before use


class PostgresStore(Store):
    """Tables ``events``, ``snapshots`` and ``data_keys`` in one schema. Connections come
    from a pool, in autocommit mode: a read is one round trip, a batch one explicit
    transaction.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        create: bool = True,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 30.0,
        url: str | None = None,
    ) -> None:
        self.url = redact(url or conninfo)
        self.schema = schema
        self._conninfo = conninfo
        self._errors = DriverErrors(self.url, psycopg.Error, _reason)
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in conninfo and "PGCONNECT_TIMEOUT" not in os.environ:
            self._kwargs["connect_timeout"] = CONNECT_TIMEOUT
        self._sql = _Statements(schema)
        with self._connect() as conn:
            self._ensure_tables(conn, create)
        self._last_used: WeakKeyDictionary[psycopg.Connection[Any], float] = WeakKeyDictionary()
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            conninfo,
            min_size=pool_min,
            max_size=pool_max,
            timeout=pool_timeout,
            kwargs=self._kwargs,
            name=self.url,
            open=False,
            check=self._check_if_idle,
        )
        # Connections are made in the background; the first operation waits for one.
        self._pool.open(wait=False)
        # Followers LISTEN on it (watch); saves NOTIFY it, through the notifier.
        self._channel = ("cairn:" + schema).encode()[:63].decode(errors="ignore")
        self._notifier = _Notifier(self)

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        base, _, query = url.partition("?")
        options = Options(
            url,
            query,
            OPTIONS,
            passed_on=LIBPQ_PARAMS,
            passed_on_as="libpq's connection parameters (sslmode, connect_timeout...)",
        )
        pool_min = options.count("pool_min", 1, minimum=0)
        pool_max = options.count("pool_max", 10)
        assert pool_min is not None and pool_max is not None
        if pool_min > pool_max:
            raise options.error(
                f"need pool_min <= pool_max, not pool_min={pool_min}, pool_max={pool_max}"
            )
        libpq = options.passed_on()
        schema = options.text("schema")
        if schema is None:
            schema, url = DEFAULT_SCHEMA, _with_default_schema(url)
        return cls(
            f"{base}?{urlencode(libpq, quote_via=quote)}" if libpq else base,
            schema=schema,
            create=options.flag("create", True),
            pool_min=pool_min,
            pool_max=pool_max,
            pool_timeout=options.seconds("pool_timeout", 30.0),
            url=url,
        )

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of its own (not from the pool), or a StoreError that says why not."""
        try:
            return psycopg.connect(self._conninfo, **self._kwargs)
        except psycopg.Error as exc:
            reason = _reason(exc)
            if "authentication failed" in reason or "no password supplied" in reason:
                raise StoreError(
                    f"{self.url}: authentication failed (check the user and password in the "
                    f"URL, PGUSER/PGPASSWORD or ~/.pgpass): {reason}"
                ) from exc
            raise StoreError(f"{self.url}: cannot connect to PostgreSQL: {reason}") from exc

    def _ensure_tables(self, conn: psycopg.Connection[Any], create: bool) -> None:
        """Create the schema and tables unless they exist, and widen 32-bit versions; if
        ``create`` is off, say what is missing or narrow instead."""
        failure = f"cannot create the tables in schema {self.schema!r}"
        with self._errors(failure):
            found = dict(conn.execute(SELECT_TABLES, (self.schema,)).fetchall())
            narrow = [t for t in VERSIONED if found.get(t) == "integer"]
            if set(found) == {*TABLES, *OPTIONAL_TABLES} and not narrow:
                return
            row = conn.execute(SELECT_SCHEMA, (self.schema,)).fetchone()
            schema_exists = bool(row and row[0])
            if not create:
                if set(TABLES) <= set(found) and not narrow:
                    return  # made before the optional tables: usable without them
                raise StoreError(self._cannot_create(found, narrow, schema_exists))
            with conn.transaction():
                conn.execute(LOCK_SCHEMA, (f"cairn.{self.schema}",))
                # Checked first: CREATE SCHEMA needs a right on the database even if it exists.
                if not schema_exists:
                    conn.execute(self._sql.create_schema)
                for statement in self._sql.create_tables:
                    conn.execute(statement)
                # Read again under the lock: another process may have widened them.
                found = dict(conn.execute(SELECT_TABLES, (self.schema,)).fetchall())
                for table in VERSIONED:
                    if found.get(table) == "integer":
                        conn.execute(self._sql.widen_version[table])

    def _cannot_create(self, found: dict[str, str], narrow: list[str], schema_exists: bool) -> str:
        missing = ", ".join(t for t in TABLES if t not in found)
        if not schema_exists:
            what = "does not exist"
        elif missing:
            what = f"has no table {missing}"
        else:
            what = f"has 32-bit versions in {', '.join(narrow)}, to be widened to bigint"
        return f"{self.url}: schema {self.schema!r} {what}, and create=false forbids creating it"

    @contextmanager
    def _connection(self, failure: str) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; a driver error in the block becomes a StoreError saying ``failure``."""
        with self._errors(failure), self._pool.connection() as conn:
            try:
                yield conn
            finally:
                self._last_used[conn] = time.monotonic()

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        """Called by the pool before it lends a connection. One left unused for a while
        (a server restarted since would have closed it) must first answer an empty
        query, else the pool replaces it: so the first operation after a quiet spell
        does not fail. A connection in steady use is lent without the round trip."""
        if time.monotonic() - self._last_used.get(conn, 0.0) > IDLE_CHECK:
            conn.execute("")

    # -- events

    def append(self, records: Sequence[Record], *, all_or_none: bool = True) -> Appended:
        if not records:
            return Appended()
        return self._append(records, None)

    def _append(self, records: Sequence[Record], tracking: Tracking | None) -> Appended:
        """The batch in one transaction; with ``tracking``, which the transaction advances
        first (a second runner waits on its row, then finds it advanced: AlreadyProcessed)."""
        check_ids(records)
        if len(records) >= 1 << TXID_BITS:
            raise StoreError(
                f"{self.url}: a batch of {len(records)} events is too large for one save "
                f"(at most {(1 << TXID_BITS) - 1}); save in smaller batches"
            )
        rows = [
            (r.originator_id, r.originator_version, r.topic, r.data, i)
            for i, r in enumerate(records)
        ]
        with self._connection("the batch was not stored") as conn:
            if tracking is None and len(rows) <= MULTI_ROW_MAX:
                base = self._insert_alone(conn, rows, records)
            else:
                base = self._insert_in_transaction(conn, rows, records, tracking)
        self._notifier.saved()
        return Appended(range(base, base + len(rows)))

    def _insert_alone(
        self,
        conn: psycopg.Connection[Any],
        rows: list[tuple[UUID, int, str, bytes, int]],
        records: Sequence[Record],
    ) -> int:
        """A small batch in one round trip: one INSERT, its own transaction (autocommit),
        committed by the server before it answers; the position of the first.

        An error on a connection still alive is the server's answer: the transaction
        was rolled back, nothing stored. A connection lost once the statement was sent
        may hide a commit: OutcomeUnknown. So that a connection the server has closed
        meanwhile (a restart) fails before anything is sent, and is said to have stored
        nothing, one that has heard from the server while idle is checked first."""
        if _heard_from(conn):
            conn.execute("")  # a driver error here is "not stored": nothing was sent
        params = [v for row in rows for v in row]
        try:
            cursor = conn.execute(self._sql.insert_events[len(rows)], params)
        except errors.UniqueViolation:
            raise refusal(records, lambda i, vs: self._first_stored(conn, i, vs)) from None
        except psycopg.Error as exc:
            if conn.broken:
                raise OutcomeUnknown(
                    f"{self.url}: the connection was lost before the server answered: the "
                    f"batch of {_batch_names(records)} may or may not be stored; re-read it "
                    f"to know: {_reason(exc)}"
                ) from exc
            raise StoreError(
                f"{self.url}: the batch of {_batch_names(records)} was not stored (the server "
                f"refused it, and rolled its transaction back): {_reason(exc)}"
            ) from exc
        return int(cursor.fetchone()[0])  # type: ignore[index]

    def _insert_in_transaction(
        self,
        conn: psycopg.Connection[Any],
        rows: list[tuple[UUID, int, str, bytes, int]],
        records: Sequence[Record],
        tracking: Tracking | None,
    ) -> int:
        """The batch in an explicit transaction, which ``tracking`` (if any) advances first;
        the position of the first."""
        committing = False
        try:
            with conn.transaction():
                if tracking is not None and conn.execute(self._sql.track, tracking).rowcount == 0:
                    raise AlreadyProcessed(already_processed(self.url, tracking))
                base = self._insert(conn, rows)
                committing = True  # the block's end sends COMMIT
        except errors.UniqueViolation:
            raise refusal(records, lambda i, vs: self._first_stored(conn, i, vs)) from None
        except psycopg.Error as exc:
            if committing and conn.broken:
                # COMMIT was sent but its answer lost: the server may have committed.
                raise OutcomeUnknown(
                    f"{self.url}: the connection was lost during COMMIT: the batch of "
                    f"{_batch_names(records)} may or may not be stored; re-read it to "
                    f"know: {_reason(exc)}"
                ) from exc
            raise StoreError(
                f"{self.url}: the batch of {_batch_names(records)} was not stored "
                f"(its transaction was never committed): {_reason(exc)}"
            ) from exc
        return base

    def _insert(
        self, conn: psycopg.Connection[Any], rows: list[tuple[UUID, int, str, bytes, int]]
    ) -> int:
        """Insert the rows in the open transaction, by whichever statement is faster for their
        number; the position of the first. Each row's last value is its index in the batch
        (see TXID_POSITION)."""
        if len(rows) <= MULTI_ROW_MAX:
            params = [v for row in rows for v in row]
            return int(conn.execute(self._sql.insert_events[len(rows)], params).fetchone()[0])  # type: ignore[index]
        # COPY takes no expressions: ask for the transaction's base position first.
        base = conn.execute(SELECT_TXID_POSITION).fetchone()[0]  # type: ignore[index]
        with conn.cursor() as cursor, cursor.copy(self._sql.copy_events) as copy:
            copy.set_types(list(COPY_TYPES))
            for *row, index in rows:
                copy.write_row((*row, base + index))
        return int(base)

    def _first_stored(
        self, conn: psycopg.Connection[Any], originator_id: UUID, versions: list[int]
    ) -> int | None:
        row = conn.execute(self._sql.select_stored_version, (originator_id, versions)).fetchone()
        return None if row is None else row[0]

    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        return list(
            map(as_record, self.select_rows(originator_id, gt=gt, lte=lte, desc=desc, limit=limit))
        )

    def select_rows(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[RecordFields]:
        query = self._sql.select_events_desc if desc else self._sql.select_events
        params = _select_params(originator_id, gt, lte, limit)
        with self._connection(f"cannot read aggregate {originator_id}") as conn:
            # Binary results: bytea arrives as bytes, without hex decoding.
            rows = conn.execute(query, params, binary=True).fetchall()
        return [(originator_id, v, t, d, None) for v, t, d in rows]

    def select_pages(
        self,
        originator_id: UUID,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Generator[Sequence[RecordFields], None, None]:
        """:meth:`select_rows`' pages, read ahead: the next page's query is sent before this
        page is handed over, so that the server reads it while replay decodes this one (a
        pipeline on one pooled connection, held until the last page is read or the
        generator closed)."""
        if not psycopg.Pipeline.is_supported():  # (a libpq older than 14)
            return super().select_pages(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        return self._pages_ahead(originator_id, gt, lte, desc, limit)

    def _pages_ahead(
        self, originator_id: UUID, gt: int | None, lte: int | None, desc: bool, limit: int | None
    ) -> Generator[Sequence[RecordFields], None, None]:
        with self._connection(f"cannot read aggregate {originator_id}") as conn, conn.pipeline():
            send = partial(self._send_select, conn)
            yield from self._pages(send, originator_id, gt, lte, desc, limit)

    def _send_select(
        self,
        conn: psycopg.Connection[Any],
        originator_id: UUID,
        *,
        gt: int | None,
        lte: int | None,
        desc: bool,
        limit: int,
    ) -> Callable[[], list[RecordFields]]:
        """A select of one aggregate's events sent in the pipeline, and what reads it."""
        cursor = conn.cursor(binary=True)  # binary: bytea arrives as bytes
        query = self._sql.select_events_desc if desc else self._sql.select_events
        cursor.execute(query, _select_params(originator_id, gt, lte, limit))
        return lambda: [(originator_id, v, t, d, None) for v, t, d in cursor.fetchall()]

    # -- snapshots

    def put_snapshot(self, record: Record) -> None:
        aggregate_id(record.originator_id)
        row = (record.originator_id, record.originator_version, record.topic, record.data)
        with self._connection(f"the snapshot of {record.originator_id} was not stored") as conn:
            conn.execute(self._sql.upsert_snapshot, row)

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        params = (aggregate_id(originator_id), MAX_VERSION if lte is None else lte)
        with self._connection(f"cannot read snapshots of {originator_id}") as conn:
            row = conn.execute(self._sql.select_snapshot, params, binary=True).fetchone()
        return None if row is None else Record(originator_id, row[0], row[1], row[2])

    # -- data keys

    def get_data_key(self, originator_id: UUID) -> bytes | None:
        with self._connection("cannot read a data key") as conn:
            row = conn.execute(self._sql.select_data_key, (originator_id,), binary=True).fetchone()
        return None if row is None else bytes(row[0])

    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        with self._connection("cannot store a data key") as conn:
            conn.execute(self._sql.insert_data_key, (originator_id, wrapped))
        stored = self.get_data_key(originator_id)
        assert stored is not None
        return stored

    def forget_data_key(self, originator_id: UUID) -> None:
        with self._connection("cannot forget a data key") as conn:
            conn.execute(self._sql.forget_data_key, (originator_id,))

    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        if not old:  # a tombstone is never replaced
            return False
        with self._connection("cannot replace a data key") as conn:
            cursor = conn.execute(self._sql.replace_data_key, (new, originator_id, old))
            return cursor.rowcount == 1

    # -- the feed

    def read_feed_page(
        self, after: int, limit: int, topics: tuple[str, ...] | None
    ) -> FeedPage[Record]:
        if topics is not None:
            return self._read_feed_of(after, limit, topics)
        with self._connection("cannot read the feed") as conn:
            rows = conn.execute(self._sql.select_feed, (after, limit), binary=True).fetchall()
        last = rows[-1][4] if rows else after
        return FeedPage(map(as_record, rows), last, caught_up=len(rows) < limit)

    def _read_feed_of(self, after: int, limit: int, topics: tuple[str, ...]) -> FeedPage[Record]:
        params = (after, list(topics), limit)
        with self._connection("cannot read the feed") as conn:
            rows = conn.execute(self._sql.select_feed_of_topics, params, binary=True).fetchall()
        seen = rows[0][0] if rows else None
        records = [Record(i, v, t, d, p) for _, p, i, v, t, d in rows if p is not None]
        if len(records) == limit:
            return FeedPage(records, records[-1].position or after, caught_up=False)
        return FeedPage(records, max(after, seen or 0), caught_up=True)

    # -- scanning and rewriting

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        start = UUID(int=0) if after is None else after
        with self._connection("cannot list aggregates") as conn:
            return [i for (i,) in conn.execute(self._sql.select_ids, (start, limit))]

    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        rows = [
            (new.topic, new.data, old.originator_id, old.originator_version, old.topic, old.data)
            for old, new in changes
        ]
        with self._connection("nothing was rewritten") as conn, conn.transaction():
            return sum(conn.execute(self._sql.rewrite_event, row).rowcount for row in rows)

    # -- tracking

    def append_tracked(self, records: Sequence[Record], tracking: Tracking) -> Appended:
        if not records:
            self.track(tracking)
            return Appended()
        return self._append(records, tracking)

    def track(self, tracking: Tracking) -> None:
        with self._connection(f"cannot track {tracking.upstream!r}") as conn:
            conn.execute(self._sql.track, tracking)

    def tracked_position(self, upstream: str) -> int:
        with self._connection(f"cannot read the tracked position of {upstream!r}") as conn:
            row = conn.execute(self._sql.select_tracked, (upstream,)).fetchone()
        return 0 if row is None else int(row[0])

    def watch(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """LISTEN on the store's channel, on a connection of its own, in a thread that calls
        ``wake`` on each notification (reconnecting after a second if the connection is
        lost, meanwhile followers poll)."""
        stop = threading.Event()
        listen = sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))

        def listening() -> None:
            while not stop.is_set():
                try:
                    with self._connect() as conn:
                        conn.execute(listen)
                        wake()  # (anything saved before LISTEN took effect: read it)
                        while not stop.is_set():
                            for _ in conn.notifies(timeout=0.5):
                                wake()
                except (psycopg.Error, StoreError) as exc:
                    log.info("%s: not listening for saves (%s); again in 1 s", self.url, exc)
                    stop.wait(1.0)

        thread = threading.Thread(target=listening, name=f"cairn-listen {self.url}", daemon=True)
        thread.start()

        def unwatch() -> None:
            stop.set()
            thread.join(timeout=2.0)

        return unwatch

    # -- closing

    def close(self) -> None:
        self._notifier.close()
        self._pool.close()


class _Notifier:
    """NOTIFYs the store's channel soon after saves, from a thread of its own: once per
    NOTIFY_EVERY at most, for all the saves since. Not in the save's transaction: a NOTIFY
    there serialises commits (PostgreSQL takes a lock for it at COMMIT), which cost about
    a fifth of the saves/s of four writers here; a save only sets an event."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.wanted = threading.Event()
        self.pending = False  # a save not notified yet
        self.closed = False
        self.thread: threading.Thread | None = None
        self.pid = 0  # the thread's process: a thread does not survive fork

    def saved(self) -> None:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.thread = threading.Thread(
                target=self._run, name=f"cairn-notify {self.store.url}", daemon=True
            )
            self.thread.start()
        self.pending = True
        self.wanted.set()

    def _run(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            if self.pending:
                self.pending = False
                try:
                    with self.store._pool.connection() as conn:
                        conn.execute(NOTIFY, (self.store._channel,))
                except (psycopg.Error, PoolClosed, PoolTimeout) as exc:
                    log.debug("%s: no notification of a save: %s", self.store.url, exc)
            if self.closed:
                return
            time.sleep(NOTIFY_EVERY)

    def close(self) -> None:
        """Send the notification of the last saves, if any, before the pool closes."""
        self.closed = True
        self.wanted.set()
        if self.thread is not None and self.pid == os.getpid():
            self.thread.join(timeout=1.0)


class _Statements:
    """The module's SQL for one schema, rendered once (psycopg prepares a statement
    on a connection after a few runs of the same text)."""

    def __init__(self, schema: str) -> None:
        def render(template: str, **parts: str) -> bytes:
            composed = sql.SQL(template).format(
                schema=sql.Identifier(schema), **{k: sql.SQL(v) for k, v in parts.items()}
            )
            return composed.as_bytes()

        self.create_schema = render(CREATE_SCHEMA)
        self.create_tables = [render(t) for t in CREATE_TABLES]
        self.widen_version = {t: render(WIDEN_VERSION, table=t) for t in VERSIONED}
        self.insert_events = {
            n: render(INSERT_EVENTS, rows=", ".join([EVENT_ROW] * n))
            for n in range(1, MULTI_ROW_MAX + 1)
        }
        self.copy_events = render(COPY_EVENTS)
        self.select_events = render(SELECT_EVENTS, order="ASC")
        self.select_events_desc = render(SELECT_EVENTS, order="DESC")
        self.select_stored_version = render(SELECT_STORED_VERSION)
        self.select_feed = render(SELECT_FEED)
        self.select_feed_of_topics = render(SELECT_FEED_OF_TOPICS)
        self.select_ids = render(SELECT_IDS)
        self.rewrite_event = render(REWRITE_EVENT)
        self.select_data_key = render(SELECT_DATA_KEY)
        self.insert_data_key = render(INSERT_DATA_KEY)
        self.forget_data_key = render(FORGET_DATA_KEY)
        self.replace_data_key = render(REPLACE_DATA_KEY)
        self.upsert_snapshot = render(UPSERT_SNAPSHOT)
        self.select_snapshot = render(SELECT_SNAPSHOT)
        self.track = render(TRACK)
        self.select_tracked = render(SELECT_TRACKED)


def _with_default_schema(url: str) -> str:
    """The URL, naming the schema it leaves out (for messages), said once in the log."""
    shown = redact(url)
    if shown not in _told_default_schema:
        _told_default_schema.add(shown)
        log.warning(
            "%s names no schema: the store is in schema %s, the default (name one with "
            "?schema=NAME; ?schema=%s says it is meant)",
            shown,
            DEFAULT_SCHEMA,
            DEFAULT_SCHEMA,
        )
    return f"{url}{'&' if '?' in url.rpartition('@')[2] else '?'}schema={DEFAULT_SCHEMA}"


def _select_params(
    originator_id: UUID, gt: int | None, lte: int | None, limit: int
) -> tuple[UUID, int, int, int]:
    """The parameters of a select of one aggregate's events: open bounds made numbers."""
    return originator_id, -1 if gt is None else gt, MAX_VERSION if lte is None else lte, limit


def _heard_from(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection has something to read: the server spoke unasked (most
    often to say it is closing the connection: a restart, a terminated backend)."""
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def _batch_names(records: Sequence[Record]) -> str:
    """The aggregates and versions of a batch, for messages: ``aggregate ID versions 3-5``."""
    parts = []
    for originator_id in dict.fromkeys(r.originator_id for r in records):
        versions = [r.originator_version for r in records if r.originator_id == originator_id]
        span = f"{min(versions)}-{max(versions)}" if len(versions) > 1 else str(versions[0])
        parts.append(f"aggregate {originator_id} version{'s' if len(versions) > 1 else ''} {span}")
    return ", ".join(parts)


def _reason(exc: BaseException) -> str:
    """The server's message, else libpq's on one line without the lines it repeats
    (one per address tried); for the pool's errors, that no connection was to be had."""
    if isinstance(exc, PoolTimeout | PoolClosed):
        return f"no connection: {exc}"
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    text = str(exc).removeprefix("connection failed: ")
    lines = (" ".join(line.split()) for line in text.splitlines())
    return " ".join(dict.fromkeys(line for line in lines if line))


if TYPE_CHECKING:
    PostgresRecorder = PostgresStore
else:
    __getattr__ = module_aliases(__name__, {"PostgresRecorder": "PostgresStore"}, globals())
