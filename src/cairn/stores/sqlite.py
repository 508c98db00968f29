"""The SQLite store: the embedded default. One file, WAL mode, safe for threads and processes.

URL: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, with
optional ``?synchronous=full|normal`` (default full, as SQLite's own default),
``?timeout=SECONDS`` (how long a writer waits for the file's write lock) and
``?create=false`` (never create the file or its tables: a missing one is an error).

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
from urllib.parse import quote
from uuid import UUID

from cairn.errors import ConcurrencyError, StoreError
from cairn.stores import Record, Recorder, query_params

# All of the store's SQL, in one place.
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
)
INSERT_EVENT = (
    "INSERT INTO events (originator_id, originator_version, topic, data) VALUES (?, ?, ?, ?)"
)
SELECT_EVENTS = (
    "SELECT originator_version, topic, data FROM events WHERE originator_id = ? "
    "AND originator_version > ? AND originator_version <= ? ORDER BY originator_version {order} LIMIT ?"
)
SELECT_STORED_VERSIONS = (
    "SELECT originator_version FROM events WHERE originator_id = ? AND originator_version IN ({})"
)
SELECT_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"
# Copies of a replaced data key leave the WAL (the main file's old cell is zeroed
# by secure_delete). TRUNCATE waits for readers (the busy timeout) to finish.
CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"
REWRITE_EVENT = (
    "UPDATE events SET data = ? WHERE originator_id = ? AND originator_version = ? AND data = ?"
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
SELECT_IDS = (
    "SELECT originator_id FROM events WHERE originator_version = 0 AND originator_id > ? "
    "ORDER BY originator_id LIMIT ?"
)
SELECT_SNAPSHOT = (
    "SELECT originator_version, topic, data FROM snapshots WHERE originator_id = ? "
    "AND originator_version <= ? ORDER BY originator_version DESC LIMIT 1"
)

_MAX_VERSION = 2**63 - 1
TABLES = ("events", "snapshots", "data_keys")
VERSIONS_PER_QUERY = 500  # well under SQLite's limit on a statement's parameters (999 before 3.32)

log = logging.getLogger(__name__)


class SQLiteRecorder(Recorder):
    """A SQLite file. Each thread (and process) has its own connection; a batch is one
    ``BEGIN IMMEDIATE`` transaction, so writers queue on the file lock instead of deadlocking.
    """

    def __init__(
        self, path: str, *, synchronous: str = "FULL", timeout: float = 30.0, create: bool = True
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(
                f"sqlite: synchronous must be off, normal, full or extra, not {synchronous!r}"
            )
        self.path = path
        self.url = f"sqlite:///{path}"
        self._synchronous = synchronous.upper()
        self._timeout = timeout
        self._create = create
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if create:
            self._create_file()
        elif not os.path.isfile(path):
            raise StoreError(f"{self.url}: no such file, and create=false forbids creating it")
        conn = self._connection()
        try:
            if not create:
                self._check_tables(conn)
                return
            with conn:
                for statement in SCHEMA:
                    conn.execute(statement)
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{self.url}: cannot create the tables: {exc}") from exc
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
        found = {name for (name,) in conn.execute(SELECT_TABLES)}
        missing = [t for t in TABLES if t not in found]
        if missing:
            raise StoreError(
                f"{self.url}: not a cairn store (no table {', '.join(missing)}), and "
                "create=false forbids creating it"
            )

    @classmethod
    def from_url(cls, url: str) -> SQLiteRecorder:
        rest = url.split("://", 1)[1]
        path, _, query = rest.partition("?")
        if not path.startswith("/") or path == "/":
            raise StoreError(
                f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        params = query_params(query)
        create = params.get("create", "true").lower()
        if create not in ("true", "false", "1", "0", "yes", "no"):
            raise StoreError(f"bad SQLite URL {url!r}: create must be true or false")
        return cls(
            path[1:],
            synchronous=params.get("synchronous", "full"),
            timeout=float(params.get("timeout", 30)),
            create=create in ("true", "1", "yes"),
        )

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread, and a new one after fork: a SQLite
        # connection must never be shared across processes.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # With create=false, mode=rw: a file removed meanwhile is not made anew.
        target = self.path if self._create else f"file:{quote(self.path)}?mode=rw"
        try:
            conn = sqlite3.connect(
                target,
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=not self._create,
            )
            if self._create:  # (a store's file is in WAL mode for good once created)
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: cannot open the database: {exc}") from exc
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def append(self, records: Sequence[Record]) -> None:
        if not records:
            return
        rows = [(r.originator_id.bytes, r.originator_version, r.topic, r.data) for r in records]
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_EVENT, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise ConcurrencyError(self._conflict(conn, records)) from None
            raise StoreError(f"{self.url}: the batch was not stored: {_describe(exc)}") from exc

    def _conflict(self, conn: sqlite3.Connection, records: Sequence[Record]) -> str:
        """Say which of the batch's versions are already stored (the error path only)."""
        for originator_id in dict.fromkeys(r.originator_id for r in records):
            versions = [r.originator_version for r in records if r.originator_id == originator_id]
            stored = []
            for start in range(0, len(versions), VERSIONS_PER_QUERY):
                chunk = versions[start : start + VERSIONS_PER_QUERY]
                sql = SELECT_STORED_VERSIONS.format(",".join("?" * len(chunk)))
                try:
                    stored += [v for (v,) in conn.execute(sql, (originator_id.bytes, *chunk))]
                except sqlite3.Error:
                    return f"aggregate {originator_id}: a version of the batch is already stored"
            if stored:
                return f"aggregate {originator_id}: version {min(stored)} is already stored (stale writer?)"
        return "the batch repeats a version (aggregate and version given twice)"

    def select_page(
        self, originator_id: UUID, *, gt: int | None, lte: int | None, desc: bool, limit: int
    ) -> list[Record]:
        sql = SELECT_EVENTS.format(order="DESC" if desc else "ASC")
        params = (
            originator_id.bytes,
            -1 if gt is None else gt,
            _MAX_VERSION if lte is None else lte,
            limit,
        )
        try:
            rows = self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: cannot read aggregate {originator_id}: {exc}") from exc
        return [Record(originator_id, v, t, d) for v, t, d in rows]

    def read_feed(self, after: int = 0, limit: int = 1000) -> list[Record]:
        try:
            rows = self._connection().execute(SELECT_FEED, (after, limit)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc
        ids: dict[bytes, UUID] = {}  # a page holds many events of few aggregates
        return [
            Record(ids.get(i) or ids.setdefault(i, UUID(bytes=i)), v, t, d, p)
            for p, i, v, t, d in rows
        ]

    def aggregate_ids(self, after: UUID | None = None, limit: int = 1000) -> list[UUID]:
        start = b"" if after is None else after.bytes
        try:
            rows = self._connection().execute(SELECT_IDS, (start, limit)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: cannot list aggregates: {exc}") from exc
        return [UUID(bytes=i) for (i,) in rows]

    def rewrite(self, changes: Sequence[tuple[Record, Record]]) -> int:
        rows = [
            (new.data, old.originator_id.bytes, old.originator_version, old.data)
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
            raise StoreError(f"{self.url}: nothing was rewritten: {_describe(exc)}") from exc
        return replaced

    def get_data_key(self, originator_id: UUID) -> bytes | None:
        row = self._execute(
            SELECT_DATA_KEY, (originator_id.bytes,), "cannot read a data key"
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put_data_key(self, originator_id: UUID, wrapped: bytes) -> bytes:
        self._execute(INSERT_DATA_KEY, (originator_id.bytes, wrapped), "cannot store a data key")
        stored = self.get_data_key(originator_id)
        assert stored is not None
        return stored

    def forget_data_key(self, originator_id: UUID) -> None:
        self._execute(FORGET_DATA_KEY, (originator_id.bytes,), "cannot forget a data key")
        self._scrub()

    def replace_data_key(self, originator_id: UUID, old: bytes, new: bytes) -> bool:
        if not old:  # a tombstone is never replaced
            return False
        params = (new, originator_id.bytes, old)
        replaced = self._execute(REPLACE_DATA_KEY, params, "cannot replace a data key").rowcount
        if replaced:
            self._scrub()
        return replaced == 1

    def _scrub(self) -> None:
        """Truncate the WAL, so that the page images holding a replaced key go with it."""
        busy, _, _ = self._execute(CHECKPOINT, (), "cannot checkpoint the WAL").fetchone()
        if busy:  # readers kept it busy past the timeout: the next checkpoint will do it
            log.warning("%s: the WAL still holds a replaced data key (busy readers)", self.url)

    def _execute(self, sql: str, params: tuple[object, ...], failure: str) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: {failure}: {_describe(exc)}") from exc

    def put_snapshot(self, record: Record) -> None:
        row = (record.originator_id.bytes, record.originator_version, record.topic, record.data)
        try:
            self._connection().execute(UPSERT_SNAPSHOT, row)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.url}: the snapshot was not stored: {exc}") from exc

    def get_snapshot(self, originator_id: UUID, lte: int | None = None) -> Record | None:
        params = (originator_id.bytes, _MAX_VERSION if lte is None else lte)
        try:
            row = self._connection().execute(SELECT_SNAPSHOT, params).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(
                f"{self.url}: cannot read snapshots of {originator_id}: {exc}"
            ) from exc
        return None if row is None else Record(originator_id, row[0], row[1], row[2])

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _describe(exc: sqlite3.Error) -> str:
    """SQLite's message with its error code name (SQLITE_FULL, SQLITE_IOERR_WRITE, ...)."""
    name = getattr(exc, "sqlite_errorname", None)
    hint = ""
    if name and (name.startswith("SQLITE_IOERR") or name == "SQLITE_FULL"):
        hint = "; is the disk full, or the file over a size limit?"
    return f"{exc} ({name}{hint})" if name else str(exc)
