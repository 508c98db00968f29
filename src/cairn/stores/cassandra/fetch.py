"""Fetching the feed ahead of its reader: a run of consecutive claims, and the events each
names, all sent at once, so that the node reads them while the reader resolves what came
before (docs/feed.md, "Reading"). Fetching decides nothing: the reader resolves each claim
in order (feed.py), from what was fetched.
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from cassandra import ConsistencyLevel

from cairn.errors import StoreError
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS
from cairn.stores.cassandra.session import Connection, release, untime


class Queries(NamedTuple):
    """The prepared statements a fetch reads with: the feed's rows (SELECT_CLAIMS, or
    SELECT_PUBLISHED), and the events of one batch and of several (SELECT_CLAIMED and
    SELECT_SHARED, or those that read intents in the positions' place)."""

    rows: Any
    batch: Any
    shared: Any


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
        self.reads: list[Read | SharedRead] = []  # each claim's events read
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

    def _on_claims(self, rows: list[tuple[Any, ...]], future: Any) -> None:
        """(The driver's thread.) The claims, up to the first gap, and their events reads."""
        try:
            for n, row in enumerate(rows):
                if row[0] != self.first + n:
                    break  # a gap: claim first + n is made but not visible here yet
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
) -> list[Read | SharedRead]:
    """Each claim's events read, sent; claims that name the same versions share one."""
    same: dict[tuple[int, int], list[int]] = {}
    for n, claim in enumerate(claims):
        same.setdefault((claim.originator_version, claim.size), []).append(n)
    found: list[Read | SharedRead] = [None] * len(claims)  # type: ignore[list-item]
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


class Ahead:
    """For each thread, the fetch of the page its next read most likely asks for: the one
    after the page it read last, if that page was full (as a reader catching up reads)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def put(self, connection: Connection, after: int, fetch: Fetch) -> None:
        """Hold ``fetch`` for this thread's next read from ``after``."""
        self._local.held = (connection, after, fetch)

    def take(self, connection: Connection, after: int) -> Fetch | None:
        """The fetch held for a read from ``after`` on this connection, if any; any other
        is let go (its requests complete unread)."""
        held = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held[0] is connection and held[1] == after:
            return held[2]  # type: ignore[no-any-return]
        return None
