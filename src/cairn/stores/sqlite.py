"""The SQLite store: the embedded default. One file, WAL mode, safe for threads and processes.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, with
optional ``?synchronous=off|normal|full|extra`` (default full, as SQLite's own
default), ``?timeout=SECONDS`` (default 30: how long a writer waits for the
file's write lock) and ``?create=false`` (never create the file or its tables:
a missing one is an error).

A new file is created readable and writable by its owner only (0600, or less
if the umask says so); SQLite gives its -wal and -shm files the same mode.
Deleted content is overwritten (``secure_delete``), and replacing a data key
(forgetting, re-wrapping) truncates the WAL, so that no copy of a destroyed
key stays in the files.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote
from uuid import UUID

from cairn.errors import AlreadyProcessed, StoreError
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
from cairn.stores.urls import Options

# All of the store's SQL, in one place.
# Every connection's settings (bench/sqlite_limit.py times raw transactions under them).
WAL = "PRAGMA journal_mode=WAL"
PRAGMAS = ("PRAGMA synchronous={synchronous}", "PRAGMA secure_delete=ON")
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        position INTEGER PRIMARY KEY,
        originator_id BLOB NOT NULL,
        originator_version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (originator_id, originator_version))""",
    """CREATE TABLE IF NOT EXISTS snapshots (
        originator_id BLOB NOT NULL,
        originator_version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (originator_id, originator_version)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS data_keys (
        originator_id BLOB PRIMARY KEY,
        wrapped BLOB NOT NULL) WITHOUT ROWID""",
    # One entry per aggregate (its first event), for listing aggregates.
    "CREATE INDEX IF NOT EXISTS events_aggregates ON events (originator_id) WHERE originator_version = 0",
    # What a process application has processed of each upstream (docs/processes.md).
    """CREATE TABLE IF NOT EXISTS tracking (
        upstream TEXT PRIMARY KEY,
        position INTEGER NOT NULL) WITHOUT ROWID""",
)
INSERT_EVENT = (
    "INSERT INTO events (originator_id, originator_version, topic, data) VALUES (?, ?, ?, ?)"
)
SELECT_EVENTS = (
    "SELECT originator_version, topic, data FROM events WHERE originator_id = ? "
    "AND originator_version > ? AND originator_version <= ? ORDER BY originator_version {order} LIMIT ?"
)
SELECT_FIRST_STORED = (
    "SELECT min(originator_version) FROM events WHERE originator_id = ? "
    "AND originator_version IN ({})"
)
# Positions (rowids) of a batch are consecutive: its transaction holds the write lock,
# so the last one's gives them all.
LAST_POSITION = "SELECT last_insert_rowid()"
SELECT_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
# Copies of a replaced data key leave the WAL (the main file's old cell is zeroed
# by secure_delete). TRUNCATE waits for readers (the busy timeout) to finish.
CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"
REWRITE_EVENT = (
    "UPDATE events SET topic = ?, data = ? WHERE originator_id = ? AND originator_version = ? "
    "AND topic = ? AND data = ?"
)
SELECT_DATA_KEY = "SELECT wrapped FROM data_keys WHERE originator_id = ?"
INSERT_DATA_KEY = "INSERT OR IGNORE INTO data_keys (originator_id, wrapped) VALUES (?, ?)"
FORGET_DATA_KEY = "INSERT OR REPLACE INTO data_keys (originator_id, wrapped) VALUES (?, x'')"
REPLACE_DATA_KEY = "UPDATE data_keys SET wrapped = ? WHERE originator_id = ? AND wrapped = ?"
UPSERT_SNAPSHOT = "INSERT OR REPLACE INTO snapshots (originator_id, originator_version, topic, data) VALUES (?, ?, ?, ?)"
# Writers hold the file's write lock from BEGIN IMMEDIATE to COMMIT, so
# positions (rowids) are taken in commit order: the feed needs no more than this.
SELECT_FEED = (
    "SELECT position, originator_id, originator_version, topic, data FROM events "
    "WHERE position > ? ORDER BY position LIMIT ?"
)
# Filtered by topic: {topics} is one ? per topic. The feed's end, read before the page
# (a later snapshot sees all an earlier one saw), is how far a short page looked.
SELECT_FEED_OF_TOPICS = (
    "SELECT position, originator_id, originator_version, topic, data FROM events "
    "WHERE position > ? AND topic IN ({topics}) ORDER BY position LIMIT ?"
)
SELECT_FEED_END = "SELECT max(position) FROM events"
SELECT_IDS = (
    "SELECT originator_id FROM events WHERE originator_version = 0 AND originator_id > ? "
    "ORDER BY originator_id LIMIT ?"
)
SELECT_SNAPSHOT = (
    "SELECT originator_version, topic, data FROM snapshots WHERE originator_id = ? "
    "AND originator_version <= ? ORDER BY originator_version DESC LIMIT 1"
)

# A tracked position only ever increases: a reaction whose position is not past the
# recorded one changes no row (a second runner, or a replay after a crash), and its
# transaction is rolled back.
TRACK = (
    "INSERT INTO tracking (upstream, position) VALUES (?, ?) ON CONFLICT (upstream) "
    "DO UPDATE SET position = excluded.position WHERE position < excluded.position"
)
SELECT_TRACKED = "SELECT position FROM tracking WHERE upstream = ?"

OPTIONS = ("synchronous", "timeout", "create")
SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
TABLES = ("events", "snapshots", "data_keys")  # (not tracking: older files have none)
VERSIONS_PER_QUERY = 500  # well under SQLite's limit on a statement's parameters (999 before 3.32)

log = logging.getLogger(__name__)


class SQLiteStore(Store):
    """A SQLite file. Each thread (and process) has its own connection; a batch is one
    ``BEGIN IMMEDIATE`` transaction, so writers queue on the file lock instead of deadlocking.
    """

    def __init__(
        self, path: str, *, synchronous: str = "FULL", timeout: float = 30.0, create: bool = True
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS:
            raise StoreError(
                f"sqlite: synchronous must be off, normal, full or extra, not {synchronous!r}"
            )
        self.path = path
        self.url = f"sqlite:///{path}"
        self._synchronous = synchronous.upper()
        self._timeout = timeout
        self._create = create
        self._errors = DriverErrors(self.url, sqlite3.Error, _describe)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if create:
            self._create_file()
        elif not os.path.isfile(path):
            raise StoreError(f"{self.url}: no such file, and create=false forbids creating it")
        conn = self._connection()
        try:
            if create:
                with self._errors("cannot create the tables"), conn:
                    for statement in SCHEMA:
                        conn.execute(statement)
            else:
                self._check_tables(conn)
        except StoreError:
            self.close()
            raise

    def _create_file(self) -> None:
        """Create the file for its owner only, unless it exists (SQLite would make it 0644)."""
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot create the file: {exc.strerror}") from exc

    def _check_tables(self, conn: sqlite3.Connection) -> None:
        with self._errors("cannot read its tables"):
            found = {name for (name,) in conn.execute(SELECT_TABLES)}
        missing = [t for t in TABLES if t not in found]
        if missing:
            raise StoreError(
                f"{self.url}: not a cairn store (no table {', '.join(missing)}), and "
                "create=false forbids creating it"
            )

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        rest = url.split("://", 1)[1]
        path, _, query = rest.partition("?")
        if not path.startswith("/") or path == "/":
            raise StoreError(
                f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        options = Options(url, query, OPTIONS)
        return cls(
            path[1:],
            synchronous=options.choice("synchronous", "full", SYNCHRONOUS),
            timeout=options.seconds("timeout", 30.0),
            create=options.flag("create", True),
        )

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread, and a new one after fork: a SQLite
        # connection must never be shared across processes.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # With create=false, mode=rw: a file removed meanwhile is not made anew.
        target = self.path if self._create else f"file:{quote(self.path)}?mode=rw"
        with self._errors("cannot open the database"):
            conn = sqlite3.connect(
                target,
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=not self._create,
            )
            if self._create:  # (a store's file is in WAL mode for good once created)
                conn.execute(WAL)
            for pragma in PRAGMAS:
                conn.execute(pragma.format(synchronous=self._synchronous))
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    # -- events

    def append(self, records: Sequence[Record], *, all_or_none: bool = True) -> Appended:
        if not records:
            return Appended()
        check_ids(records)
        rows = [(r.originator_id.bytes, r.originator_version, r.topic, r.data) for r in records]
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            last = _insert(conn, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise refusal(records, self._first_stored) from None
            raise self._errors.error("the batch was not stored", exc) from exc
        return Appended(range(last - len(rows) + 1, last + 1))

    def _first_stored(self, originator_id: UUID, versions: list[int]) -> int | None:
        # In chunks: one parameter per version, and a batch may have more versions
        # than a statement may have parameters.
        conn = self._connection()
        stored = []
        for start in range(0, len(versions), VERSIONS_PER_QUERY):
            chunk = versions[start : start + VERSIONS_PER_QUERY]
            sql = SELECT_FIRST_STORED.format(",".join("?" * len(chunk)))
            try:
                (first,) = conn.execute(sql, (originator_id.bytes, *chunk)).fetchone()
            except sqlite3.Error:
                # The batch was refused all the same: the refusal names no version.
                return None
            if first is not None:
                stored.append(first)
        return min(stored, default=None)

    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        return list(
            map(as_record, self.select_rows(originator_id, gt=gt, lte=lte, desc=desc, limit=limit))
        )

    def select_rows(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[RecordFields]:
        sql = SELECT_EVENTS.format(order="DESC" if desc else "ASC")
        params = (
            originator_id.bytes,
            -1 if gt is None else gt,
            MAX_VERSION if lte is None else lte,
            limit,
        )
        # try/except, not `with self._errors(...)`: a read is a few microseconds here.
        try:
            rows = self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._errors.error(f"cannot read aggregate {originator_id}", exc) from exc
        return [(originator_id, v, t, d, None) for v, t, d in rows]

    # -- snapshots

    def put_snapshot(self, record: Record) -> None:
        aggregate_id(record.originator_id)
        row = (record.originator_id.bytes, record.originator_version, record.topic, record.data)
        with self._errors("the snapshot was not stored"):
            self._connection().execute(UPSERT_SNAPSHOT, row)

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        params = (aggregate_id(originator_id).bytes, MAX_VERSION if lte is None else lte)
        try:
            row = self._connection().execute(SELECT_SNAPSHOT, params).fetchone()
        except sqlite3.Error as exc:
            raise self._errors.error(f"cannot read snapshots of {originator_id}", exc) from exc
        return None if row is None else Record(originator_id, row[0], row[1], row[2])

    # -- data keys

    def get_data_key(self, originator_id: UUID) -> bytes | None:
        with self._errors("cannot read a data key"):
            row = self._connection().execute(SELECT_DATA_KEY, (originator_id.bytes,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        with self._errors("cannot store a data key"):
            self._connection().execute(INSERT_DATA_KEY, (originator_id.bytes, wrapped))
        stored = self.get_data_key(originator_id)
        assert stored is not None
        return stored

    def forget_data_key(self, originator_id: UUID) -> None:
        with self._errors("cannot forget a data key"):
            self._connection().execute(FORGET_DATA_KEY, (originator_id.bytes,))
        self._truncate_wal()

    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        if not old:  # a tombstone is never replaced
            return False
        with self._errors("cannot replace a data key"):
            cursor = self._connection().execute(REPLACE_DATA_KEY, (new, originator_id.bytes, old))
        if cursor.rowcount:
            self._truncate_wal()
        return cursor.rowcount == 1

    def _truncate_wal(self) -> None:
        """Truncate the WAL, so that the page images holding a replaced key go with it."""
        with self._errors("cannot checkpoint the WAL"):
            busy, _, _ = self._connection().execute(CHECKPOINT).fetchone()
        if busy:  # readers kept it busy past the timeout: the next checkpoint will do it
            log.warning("%s: the WAL still holds a replaced data key (busy readers)", self.url)

    # -- the feed

    def read_feed_page(
        self, after: int, limit: int, topics: tuple[str, ...] | None
    ) -> FeedPage[Record]:
        end = None
        try:
            conn = self._connection()
            if topics is None:
                rows = conn.execute(SELECT_FEED, (after, limit)).fetchall()
            else:
                (end,) = conn.execute(SELECT_FEED_END).fetchone()
                sql = SELECT_FEED_OF_TOPICS.format(topics=",".join("?" * len(topics)))
                rows = conn.execute(sql, (after, *topics, limit)).fetchall()
        except sqlite3.Error as exc:
            raise self._errors.error("cannot read the feed", exc) from exc
        ids: dict[bytes, UUID] = {}  # a page holds many events of few aggregates
        records = [
            as_record((ids.get(i) or ids.setdefault(i, UUID(bytes=i)), v, t, d, p))
            for p, i, v, t, d in rows
        ]
        last = rows[-1][0] if rows else after
        if len(rows) == limit:
            return FeedPage(records, last, caught_up=False)
        return FeedPage(records, max(last, end or 0), caught_up=True)

    # -- scanning and rewriting

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        start = b"" if after is None else after.bytes
        with self._errors("cannot list aggregates"):
            rows = self._connection().execute(SELECT_IDS, (start, limit)).fetchall()
        return [UUID(bytes=i) for (i,) in rows]

    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        rows = [
            (
                new.topic,
                new.data,
                old.originator_id.bytes,
                old.originator_version,
                old.topic,
                old.data,
            )
            for old, new in changes
        ]
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            replaced = sum(conn.execute(REWRITE_EVENT, row).rowcount for row in rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._errors.error("nothing was rewritten", exc) from exc
        return replaced

    # -- tracking

    def append_tracked(self, records: Sequence[Record], tracking: Tracking) -> Appended:
        check_ids(records)
        rows = [(r.originator_id.bytes, r.originator_version, r.topic, r.data) for r in records]
        conn = self._connection()
        last = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            tracked = conn.execute(TRACK, tracking).rowcount
            if tracked:
                if rows:
                    last = _insert(conn, rows)
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise refusal(records, self._first_stored) from None
            raise self._errors.error("the reaction was not stored", exc) from exc
        if not tracked and records:
            raise AlreadyProcessed(already_processed(self.url, tracking))
        return Appended(range(last - len(rows) + 1, last + 1) if tracked and rows else ())

    def track(self, tracking: Tracking) -> None:
        with self._errors(f"cannot track {tracking.upstream!r}"):
            self._connection().execute(TRACK, tracking)

    def tracked_position(self, upstream: str) -> int:
        with self._errors(f"cannot read the tracked position of {upstream!r}"):
            row = self._connection().execute(SELECT_TRACKED, (upstream,)).fetchone()
        return 0 if row is None else int(row[0])

    # -- closing

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _insert(conn: sqlite3.Connection, rows: list[tuple[bytes, int, str, bytes]]) -> int:
    """Insert the rows in the open transaction; the position (rowid) of the last. A save
    of one event (the most common) asks for it with the insert: the cursor's lastrowid
    saves a statement (executemany's cursor has none)."""
    if len(rows) == 1:
        position = conn.execute(INSERT_EVENT, rows[0]).lastrowid
        assert position is not None
        return position
    conn.executemany(INSERT_EVENT, rows)
    (position,) = conn.execute(LAST_POSITION).fetchone()
    return int(position)


def _describe(exc: BaseException) -> str:
    """SQLite's message with its error code name (SQLITE_FULL, SQLITE_IOERR_WRITE, ...)."""
    name = getattr(exc, "sqlite_errorname", None)
    hint = ""
    if name and (name.startswith("SQLITE_IOERR") or name == "SQLITE_FULL"):
        hint = "; is the disk full, or the file over a size limit?"
    return f"{exc} ({name}{hint})" if name else str(exc)


if TYPE_CHECKING:
    SQLiteRecorder = SQLiteStore
else:
    __getattr__ = module_aliases(__name__, {"SQLiteRecorder": "SQLiteStore"}, globals())
