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


class ClaimRow(NamedTuple):
    """A claim as a reader finds it in the feed table (a tuple: a page builds hundreds)."""

    position: int
    originator_id: Any
    originator_version: int
    size: int  # the versions its batch spans
    abandoned: bool | None
    sealed: bool | None
    written: int  # the claim's Paxos timestamp, microseconds
    now: int  # the reading coordinator's clock, milliseconds


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
    ) -> None:
        self.first, self.fresh = first, fresh
        self.claims: list[ClaimRow] = []
        self.reads: list[Read] = []  # each claim's events read
        self.complete = False  # claims go on after these: as many were there as asked for
        self.events = 0  # the events the claims fetched span
        self._connection, self._wanted, self._timeout = connection, wanted, timeout
        self._error: BaseException | None = None
        self._arrived = threading.Event()
        number = first // bucket
        self._count = min(count, (number + 1) * bucket - first)
        statement = connection.statements.select_claims.bind((number, first, self._count))
        statement.fetch_size = self._count
        try:
            future = connection.session.execute_async(statement)
        except DRIVER_ERRORS as exc:
            self._fail(exc)
            return
        future.add_callbacks(self._on_claims, self._fail, callback_args=(future,))

    def wait(self) -> Fetch:
        """This fetch once its claims are in and their events reads sent; StoreError if the
        claims could not be read."""
        if not self._arrived.wait(self._timeout):
            raise StoreError(f"the feed's claims did not arrive within {self._timeout:g} s")
        if self._error is not None:
            raise StoreError(f"cannot read the feed: {self._error}") from self._error
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
            self.reads = reads(self._connection, self.claims)
        except BaseException as exc:  # (handed to the reader's thread)
            self._error = exc
        finally:
            self._arrived.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._arrived.set()


class Read:
    """The read of the versions one or more claims name, sent: each claim's rows from it.

    One read serves every claim of a fetch whose batch begins at the same version and
    spans as many (the creations of many aggregates by batches of one size, typically):
    ``originator_id IN (...)``, one request for up to ``SHARED_READ`` partitions.
    """

    __slots__ = ("_future", "_rows")

    def __init__(self, future: Any) -> None:
        self._future = future
        self._rows: dict[Any, list[tuple[Any, ...]]] | None = None

    def rows(self, originator_id: Any) -> list[tuple[Any, ...]]:
        """The aggregate's rows (version, topic, data, position), in version order; a
        driver error if the read failed."""
        if self._rows is None:
            result = self._future.result()
            rows: dict[Any, list[tuple[Any, ...]]] = {}
            for row in result:  # (every page, were there more than one)
                rows.setdefault(row[0], []).append(row[1:])
            release(result)
            self._rows = rows
        return self._rows.get(originator_id, [])


SHARED_READ = 100  # partitions one events read may name (IN): a server's guardrail may cap it
ROWS_PER_RESPONSE = 5000  # the driver's default page; a larger batch takes more than one


def reads(connection: Connection, claims: list[ClaimRow]) -> list[Read]:
    """Each claim's events read, sent; claims that name the same versions share one."""
    same: dict[tuple[int, int], list[int]] = {}
    for n, claim in enumerate(claims):
        same.setdefault((claim.originator_version, claim.size), []).append(n)
    found: list[Read | None] = [None] * len(claims)
    for (first, size), members in same.items():
        for start in range(0, len(members), SHARED_READ):
            part = members[start : start + SHARED_READ]
            ids = list({claims[n].originator_id: None for n in part})
            read = Read(_select(connection, ids, first, size))
            for n in part:
                found[n] = read
    return found  # type: ignore[return-value]


def send(connection: Connection, claim: ClaimRow, serial: str | None = None) -> Read:
    """The read of the versions a claim names, sent. With ``serial`` (a serial consistency
    level's name), through Paxos: it completes any write in progress on the partition
    first."""
    return Read(
        _select(connection, [claim.originator_id], claim.originator_version, claim.size, serial)
    )


def _select(
    connection: Connection, ids: list[Any], first: int, size: int, serial: str | None = None
) -> Any:
    if len(ids) == 1:
        statement = connection.statements.select_claimed.bind((ids[0], first, first + size))
    else:
        statement = connection.statements.select_shared.bind((ids, first, first + size))
    # Every row in one response, up to a point: Read.rows reads on past it.
    statement.fetch_size = min(len(ids) * size, ROWS_PER_RESPONSE)
    if serial is not None:
        statement.consistency_level = ConsistencyLevel.name_to_value[serial]
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
