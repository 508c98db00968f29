"""Fetching the feed ahead of its reader: a run of consecutive claims, and the events each
names, all sent at once, so that the node reads them while the reader resolves what came
before (docs/feed.md, "Reading"). Fetching decides nothing: the reader resolves each claim
in order (feed.py), from what was fetched.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from cassandra import ConsistencyLevel

from cairn.errors import StoreError
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS
from cairn.stores.cassandra.session import Connection, release, untime

Held = TypeVar("Held")


class Queries(NamedTuple):
    """The prepared statements a fetch reads with: the feed's rows (SELECT_CLAIMS, or
    SELECT_PUBLISHED), and the events of one batch and of several (SELECT_CLAIMED and
    SELECT_SHARED, or those that read intents in the positions' place); and, where rows
    carry copies of their batches (feed=sequenced), whether a row's copy spares the read of
    its events (copies.matches)."""

    rows: Any
    batch: Any
    shared: Any
    copied: Callable[[ClaimRow], bool] | None = None


class ClaimRow(NamedTuple):
    """A claim (or a published batch) as a reader finds it in the feed table (a tuple: a
    page builds hundreds)."""

    position: int
    originator_id: Any
    originator_version: int
    size: int  # the versions its batch spans
    abandoned: bool | None
    sealed: bool | None
    written: int  # the claim's Paxos timestamp, microseconds
    now: int  # the reading coordinator's clock, milliseconds
    intent: Any = None  # a published batch's intent (feed=sequenced)
    copy: Any = None  # its copy of its batch's records, if any (copies.py): as stored


class Fetch:
    """Consecutive claims from ``first`` (at most ``count``, within one bucket of
    ``bucket`` claims: they stop at the first position not visible yet), and the events
    read of each claim that the ``wanted`` events can reach (so that memory stays bounded
    by the page, however large the batches). The claims query is sent at once; the events
    reads from the driver's thread as soon as the claims arrive.

    ``fresh`` is False for a fetch made ahead of the read that takes it: its view may be
    stale, so the reader looks again where it found a claim's events missing, or fewer
    claims than it asked for.
    """

    def __init__(
        self,
        connection: Connection,
        first: int,
        count: int,
        wanted: int,
        bucket: int,
        *,
        fresh: bool = True,
        timeout: float,
        queries: Queries,
    ) -> None:
        self.first, self.fresh = first, fresh
        self.claims: list[ClaimRow] = []
        self.reads: list[Read | SharedRead | None] = []  # each claim's events read (None: copied)
        self.complete = False  # claims go on after these: as many were there as asked for
        self.events = 0  # the events the claims fetched span
        self._connection, self._wanted, self._timeout = connection, wanted, timeout
        self._queries = queries
        self._error: BaseException | None = None
        self._arrived = threading.Event()
        number = first // bucket
        self._count = min(count, (number + 1) * bucket - first)
        statement = queries.rows.bind((number, first, self._count))
        statement.fetch_size = self._count
        try:
            future = connection.session.execute_async(statement)
        except DRIVER_ERRORS as exc:
            self._fail(exc)
            return
        future.add_callbacks(self._on_claims, self._fail, callback_args=(future,))

    def wait(self, url: str) -> Fetch:
        """This fetch once its claims are in and their events reads sent; StoreError (naming
        the store's ``url``) if the claims could not be read."""
        if not self._arrived.wait(self._timeout):
            raise StoreError(
                f"{url}: cannot read the feed: its claims did not arrive within {self._timeout:g} s"
            )
        if self._error is not None:
            raise StoreError(f"{url}: cannot read the feed: {self._error}") from self._error
        return self

    @property
    def arrived(self) -> bool:
        """Its claims are in (and their events reads sent), without error."""
        return self._arrived.is_set() and self._error is None

    def _on_claims(self, rows: list[tuple[Any, ...]], future: Any) -> None:
        """(The driver's thread.) The claims, up to the first gap, and their events reads."""
        try:
            for n, row in enumerate(rows):
                if row[0] != self.first + n:
                    break  # a gap: claim first + n is made but not visible here yet
                if row[1] is None and self._queries.copied is not None:
                    break  # a copy alone (a stray one): the position is not published
                if self.events >= self._wanted:
                    self.complete = True  # the page is full without it
                    break
                claim = ClaimRow(*row)
                self.claims.append(claim)
                self.events += claim.size
            else:
                self.complete = len(rows) == self._count
            rows.clear()  # (the claims are copied out: let the response go now)
            untime(future)
            self.reads = reads(self._connection, self.claims, self._queries)
        except BaseException as exc:  # (handed to the reader's thread)
            self._error = exc
        finally:
            self._arrived.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._arrived.set()


class Read:
    """A claim's events read, sent: the rows of the versions it names."""

    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows (version, topic, data, position), in version order; a driver error if
        the read failed."""
        result = self._future.result()
        rows = list(result)  # (every page, were there more than one)
        release(result)
        return rows


class SharedRead:
    """One read of the same versions of several aggregates, for claims of a fetch that
    name them (the creations of many aggregates by saves of one size, typically): the
    rows each claim's batch stored, found by its position, which no other batch's rows
    carry. A claim with none there is resolved by a read of its own."""

    __slots__ = ("_future", "_stored")

    def __init__(self, future: Any) -> None:
        self._future = future
        self._stored: dict[int, list[tuple[Any, ...]]] | None = None

    def stored(self, mark: Any) -> list[tuple[Any, ...]]:
        """The rows (version, topic, data, mark) that carry ``mark``, in version
        order (a batch's rows are all in its aggregate's partition); a driver error if
        the read failed."""
        if self._stored is None:
            result = self._future.result()
            stored: dict[int, list[tuple[Any, ...]]] = {}
            for row in result:  # (every page, were there more than one)
                stored.setdefault(row[3], []).append(row)
            release(result)
            self._stored = stored
        return self._stored.get(mark, [])


SHARED_READ = 100  # partitions one events read may name (IN): a server's guardrail may cap it
ROWS_PER_RESPONSE = 5000  # the driver's default page; a larger batch takes more than one


def reads(
    connection: Connection, claims: list[ClaimRow], queries: Queries
) -> list[Read | SharedRead | None]:
    """Each claim's events read, sent (None for a claim whose row's copy spares it); claims
    that name the same versions share one."""
    same: dict[tuple[int, int], list[int]] = {}
    copied = queries.copied
    for n, claim in enumerate(claims):
        if copied is None or not copied(claim):
            same.setdefault((claim.originator_version, claim.size), []).append(n)
    found: list[Read | SharedRead | None] = [None] * len(claims)
    for (first, size), members in same.items():
        if len(members) == 1:
            found[members[0]] = send(connection, claims[members[0]], None, queries)
            continue
        for start in range(0, len(members), SHARED_READ):
            part = members[start : start + SHARED_READ]
            ids = list({claims[n].originator_id: None for n in part})  # (a claim made twice)
            statement = queries.shared.bind((ids, first, first + size))
            shared = SharedRead(_execute(connection, statement, len(ids) * size))
            for n in part:
                found[n] = shared
    return found


def send(connection: Connection, claim: ClaimRow, serial: str | None, queries: Queries) -> Read:
    """The read of the versions a claim names, sent. With ``serial`` (a serial consistency
    level's name), through Paxos: it completes any write in progress on the partition
    first."""
    first = claim.originator_version
    statement = queries.batch.bind((claim.originator_id, first, first + claim.size))
    if serial is not None:
        statement.consistency_level = ConsistencyLevel.name_to_value[serial]
    return Read(_execute(connection, statement, claim.size))


def _execute(connection: Connection, statement: Any, rows: int) -> Any:
    # Every row in one response, up to a point (the reads read on past it). One more than
    # the rows there can be: a response that fills its page says there may be more, and
    # reading on would cost a round trip to learn there are none.
    statement.fetch_size = min(rows + 1, ROWS_PER_RESPONSE)
    return connection.session.execute_async(statement)


class Ahead(Generic[Held]):
    """For each thread, what its next read most likely needs, fetched: after a full page,
    what follows it (as a reader catching up reads next)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def put(self, connection: Connection, after: int, held: Held) -> None:
        """Hold ``held`` for this thread's next read from ``after``."""
        self._local.held = (connection, after, held)

    def take(self, connection: Connection, after: int) -> Held | None:
        """What is held for a read from ``after`` on this connection, if any; anything
        else is let go (its requests complete unread)."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held[0] is connection and held[1] == after:
            return held[2]  # type: ignore[no-any-return]
        return None


class Pipeline:
    """Consecutive fetches of a feed whose rows are final (feed=sequenced: every row is a
    published batch), up to ``depth`` of them sent ahead of the one whose claims its reader
    takes, so that the node reads several runs of positions at once while the reader hands
    pages out in order (docs/feed.md, "Catching up on Cassandra"). Each fetch holds at most
    about a page of events (its ``wanted``), so memory stays bounded: ``depth`` + 1 pages.

    ``make(first, fresh)`` sends the fetch of the claims from ``first``. A fetch made ahead
    may have found fewer claims than it asked for (it reached the head of its time): the
    pipeline looks again there, fresh, before it says the feed ends.
    """

    def __init__(self, make: Callable[[int, bool], Fetch], first: int, depth: int = 1) -> None:
        self._make = make
        self._fetches: deque[Fetch] = deque()
        self._end = first  # where the claims of the fetches held end (a fetch from here next)
        self._taken = 0  # the claims of the first fetch handed out
        self.depth = depth

    def next(self, url: str) -> tuple[ClaimRow, Read | SharedRead | None] | None:
        """The next claim and its events read (None: not read, its row's copy spares it),
        in position order; None where a fresh fetch
        found no more (the feed's end, as far as it could see); StoreError (naming ``url``)
        if a fetch failed."""
        while True:
            if not self._fetches:
                self._fetches.append(self._make(self._end, True))
            fetch = self._fetches[0]
            fetch.wait(url)
            self._top_up()
            if self._taken < len(fetch.claims):
                self._taken += 1
                return fetch.claims[self._taken - 1], fetch.reads[self._taken - 1]
            self._fetches.popleft()
            self._taken, self._end = 0, fetch.first + len(fetch.claims)
            if fetch.complete:
                continue
            self._fetches.clear()  # (none was made after it: there may be more since)
            if fetch.fresh:
                return None
            # (A fetch made ahead stopped short of claims made since: look again.)

    def read_on(self, depth: int) -> None:
        """Serve a later read, ``depth`` fetches ahead: what it holds was fetched before that
        read began, so where it found the head, it looks again."""
        self.depth = depth
        for fetch in self._fetches:
            fetch.fresh = False

    def back(self) -> None:
        """Hand the last claim out again (the page ended inside its batch)."""
        self._taken -= 1

    def _top_up(self) -> None:
        """Send the next fetches, up to ``depth`` ahead, after those whose claims are in
        (never waiting: the next call looks again)."""
        while len(self._fetches) <= self.depth:
            tail = self._fetches[-1]
            if not tail.arrived or not tail.complete:
                return
            self._fetches.append(self._make(tail.first + len(tail.claims), False))
