"""Projections: read models kept up to date by following an application's feed, exactly once.

A :class:`ProjectionRunner` reads the feed from the position its projection
last committed, applies a page of events to the read model, and commits the
read model's changes and the new position in one transaction of the
:class:`Views` (where read models are kept: SQLite or PostgreSQL). A crash at
any moment leaves both as they were before the page, so each event changes the
read model exactly once. The position is read inside that transaction, under
the views' write lock, so two runners of the same projection take turns
instead of both applying a page.

A projection that declares ``topics`` (the event classes it wants) is given
only those: the store filters the feed, and the runner's position still passes
the events left out. A projection whose own code raises stops its runner at
that event (:class:`~cairn.ProjectionError`, with the position): the page is
not committed, so a runner started again once the code is fixed resumes there.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from cairn.domain import DomainEvent, topic_of
from cairn.errors import ProjectionError, StoreError
from cairn.feed import Feed, topics_of
from cairn.renamed import module_aliases
from cairn.stores import redact, scrub
from cairn.stores.contract import feed_limit

if TYPE_CHECKING:
    from cairn.positions import PositionMap

T = TypeVar("T")
log = logging.getLogger(__name__)


class Projection(ABC, Generic[T]):
    """Turns events into a read model. ``name`` keys its tracked position; ``topics``, if
    set, are the event classes (or topics) it is given, the others passed over unread."""

    name: str
    topics: ClassVar[Collection[type[DomainEvent] | str] | None] = None

    def setup(self, tx: T) -> None:
        """Create the read model's tables (idempotently); called before the first page."""

    @abstractmethod
    def process(self, tx: T, event: DomainEvent) -> None:
        """Apply one event to the read model, through the views' transaction ``tx``."""


class Views(ABC, Generic[T]):
    """Where read models are kept, with the feed position each projection has committed
    (formerly ``ViewStore``)."""

    @abstractmethod
    def transaction(self) -> Any:
        """A context manager: the transaction read-model changes and positions commit in
        (one per page; read-model changes made through it commit or roll back with it)."""

    @abstractmethod
    def position(self, tx: T, name: str) -> int:
        """The last feed position committed for projection ``name`` (0 if none), locked
        for the rest of the transaction."""

    @abstractmethod
    def set_position(self, tx: T, name: str, position: int) -> None:
        """Record ``position`` for projection ``name``, inside ``tx``."""

    def move_position(self, name: str, positions: PositionMap) -> tuple[int, int]:
        """Move projection ``name``'s position from the feed of a store to the feed of its
        copy (``positions``, as ``cairn copy --positions`` made it): (from, to).

        Once per copy: the move is recorded beside the positions, and a second one into
        the same store is refused (ValueError), since the position is the copy's by
        then. Stop the projection's runners on the source first: the position of a
        runner that goes on there is the source's again.
        """
        moved = moved_name(name, positions.target)
        with self.transaction() as tx:
            if self.position(tx, moved):
                raise ValueError(
                    f"projection {name!r} was moved into {positions.target} already: its "
                    "position is that store's"
                )
            old = self.position(tx, name)
            new = positions.translate(old)
            self.set_position(tx, name, new)
            self.set_position(tx, moved, 1)
        return old, new


class SQLiteViews(Views[sqlite3.Connection]):
    """Read models in a SQLite file: the projection writes through the connection it is given."""

    TRACKING = "CREATE TABLE IF NOT EXISTS cairn_tracking (name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
    SELECT = "SELECT position FROM cairn_tracking WHERE name = ?"
    UPSERT = "INSERT OR REPLACE INTO cairn_tracking (name, position) VALUES (?, ?)"

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        with self.transaction() as conn:
            conn.execute(self.TRACKING)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (for reading the read model)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def position(self, tx: sqlite3.Connection, name: str) -> int:
        # BEGIN IMMEDIATE already holds the file's write lock: no other runner is in here.
        row = tx.execute(self.SELECT, (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_position(self, tx: sqlite3.Connection, name: str, position: int) -> None:
        tx.execute(self.UPSERT, (name, position))


class PostgresViews(Views[Any]):
    """Read models in a PostgreSQL database: the projection writes through the
    ``psycopg.Connection`` it is given, inside the transaction its position commits in.

    ``url`` is a ``postgresql://`` URL (libpq's, so ``PG*`` variables fill gaps).
    """

    TRACKING = "CREATE TABLE IF NOT EXISTS cairn_tracking (name text PRIMARY KEY, position bigint NOT NULL)"
    SELECT = "SELECT position FROM cairn_tracking WHERE name = %s"
    UPSERT = (
        "INSERT INTO cairn_tracking (name, position) VALUES (%s, %s) "
        "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position"
    )
    # Taken before the position is read and held until the page commits: a second
    # runner of the same projection waits its turn (there may be no row to lock yet).
    LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        with self.transaction() as conn:
            conn.execute(self.TRACKING)

    def connection(self) -> Any:
        """This thread's connection (for reading the read model)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            try:
                conn = self._psycopg.connect(self.url, autocommit=True)
            except self._psycopg.Error as exc:
                # libpq may quote the URL (or a piece of its password) back: scrubbed,
                # and its own exception not chained.
                raise StoreError(
                    f"cannot connect to the views at {redact(self.url)}: "
                    f"{scrub(str(exc), self.url)}"
                ) from None
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self.connection()
        with conn.transaction():
            yield conn

    def position(self, tx: Any, name: str) -> int:
        tx.execute(self.LOCK, (f"cairn.projection.{name}",))
        row = tx.execute(self.SELECT, (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def set_position(self, tx: Any, name: str, position: int) -> None:
        tx.execute(self.UPSERT, (name, position))


class ProjectionRunner(Generic[T]):
    """Follows a feed and keeps one projection's read model up to date, exactly once.

    ``failure`` is why :meth:`run` stopped (None while it runs, or if it was asked to).
    """

    def __init__(
        self, feed: Feed, projection: Projection[T], views: Views[T], *, page_size: int = 500
    ) -> None:
        self.feed = feed
        self.projection = projection
        self.views = views
        self.page_size = feed_limit(page_size)  # (ValueError now, not at the first page)
        self.failure: Exception | None = None
        self._topics = topics_of(projection.topics, feed.mapper.model)
        self._set_up = False

    def move_position(self, positions: PositionMap) -> tuple[int, int]:
        """Move the projection's position to the feed of a copy of the store (see
        :meth:`Views.move_position`): (from, to)."""
        return self.views.move_position(self.projection.name, positions)

    def run_once(self) -> int:
        """Process one page of new events; the number processed (0 when caught up, or
        when the page passed only over events not of the projection's ``topics``).

        :class:`~cairn.ProjectionError` if the projection's code raises: nothing of
        the page is committed.
        """
        return self._run_page()[0]

    def _run_page(self) -> tuple[int, bool]:
        """One page, committed with its position: (events processed, whether caught up)."""
        name = self.projection.name
        with self.views.transaction() as tx:
            after = self.views.position(tx, name)  # locks out other runners first
            if not self._set_up:
                self._setup(tx, after)
            page = self.feed.read(after, self.page_size, topics=self._topics)
            for position, event in page:
                try:
                    self.projection.process(tx, event)
                except Exception as exc:
                    raise self._stopped_at(after, position, event, exc) from exc
            if page.next_after > after:
                self.views.set_position(tx, name, page.next_after)
        self._set_up = True  # only once committed: a rolled-back setup is set up again
        return len(page), page.caught_up

    def _setup(self, tx: T, after: int) -> None:
        try:
            self.projection.setup(tx)
        except Exception as exc:
            name = self.projection.name
            raise ProjectionError(
                f"projection {name!r} stopped before feed position {after}: its setup() "
                f"raised {type(exc).__qualname__}; fix it and run it again",
                projection=name,
                after=after,
            ) from exc

    def _stopped_at(
        self, after: int, position: int, event: DomainEvent, exc: Exception
    ) -> ProjectionError:
        """The error for the projection's own code raising on ``event``: where, never what
        the event holds (the projection's exception, its cause, may)."""
        name, topic = self.projection.name, topic_of(type(event))
        return ProjectionError(
            f"projection {name!r} stopped at feed position {position}: its process() raised "
            f"{type(exc).__qualname__} on event {topic} of aggregate {event.originator_id} "
            f"version {event.originator_version}. Nothing after position {after} was "
            "committed: fix the projection and run it again, and it resumes there",
            projection=name,
            after=after,
            position=position,
            topic=topic,
            originator_id=event.originator_id,
            originator_version=event.originator_version,
        )

    def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Process pages until the feed has nothing new; the number of events processed."""
        total = 0
        while True:
            processed, caught_up = self._run_page()
            total += processed
            if processed and progress:
                progress(total)
            if caught_up:
                return total

    def run(self, stop: threading.Event, poll_interval: float = 0.1) -> None:
        """Keep processing until ``stop`` is set, waiting ``poll_interval`` when caught up.

        A store that cannot be reached is tried again. Anything else stops it, with
        the error in ``failure`` (and the log): a :class:`~cairn.ProjectionError` when
        the projection's code raised, saying at which event; a record that cannot be
        read. Nothing of the page it stopped in is committed, so a runner started
        again once the cause is fixed resumes at that event.
        """
        self.failure = None
        while not stop.is_set():
            try:
                _, caught_up = self._run_page()
            except StoreError as exc:
                log.warning("projection %r: %s; trying again", self.projection.name, exc)
                stop.wait(poll_interval)
                continue
            except Exception as exc:
                self.failure = exc
                log.error("projection %r stopped: %s", self.projection.name, exc)
                return
            if caught_up:
                stop.wait(poll_interval)


def moved_name(name: str, target: str) -> str:
    """The name under which a views' tracking table records that projection ``name`` was
    moved into the store at ``target`` (a row of its own: no table changes)."""
    return f"cairn.moved {target} {name}"


if TYPE_CHECKING:
    ViewStore = Views
else:
    __getattr__ = module_aliases(__name__, {"ViewStore": "Views"}, globals())
