"""The Cassandra store's feed: claims of positions before each save, and a reader that resolves
them in order and fences abandoned ones. ``docs/feed.md`` tells the protocol and its proof.

The store holds a :class:`CassandraFeed`, or none with ``feed=false``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import NoHostAvailable
from cassandra.query import BatchStatement, BatchType

from cairn.errors import StoreError
from cairn.stores.cassandra.batching import Batcher, Slot
from cairn.stores.cassandra.fetch import Ahead, ClaimRow, Fetch, Queries, Read, SharedRead, send
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS, column, describe, what
from cairn.stores.cassandra.resolution import Abandoned, carried, fence
from cairn.stores.cassandra.session import Connection
from cairn.stores.cassandra.settings import Settings
from cairn.stores.contract import Fences, Record

# The feed's layout: part of the stored format, the same for every process
# that opens a keyspace (bucket = position // FEED_BUCKET).
FEED_BUCKET = 100_000
INDEX_BITS = 16  # an event's position: claim << INDEX_BITS | (index in batch + 1)
MAX_FEED_BATCH = (1 << INDEX_BITS) - 1
CLAIMS_PER_WRITE = 100  # claims of concurrent saves in one process, combined in one Paxos round
CLAIM_ATTEMPTS = 1000  # Paxos rounds a claim may lose to other writers before giving up
CLAIM_RETRIES = 2  # a claim that failed (timeout, overload) is tried again this often
CLAIMS_PER_READ = 100  # claims a feed reader fetches (and resolves concurrently) per query

log = logging.getLogger(__name__)


class CutOver(StoreError):
    """The keyspace was cut over to the sequenced feed: a store of claims can no longer
    claim a position (nothing was written) nor read on."""


@dataclass(frozen=True)
class Claim:
    """What a batch claims a position for: its aggregate, lowest version, and span."""

    originator_id: Any
    originator_version: int
    size: int  # the versions the batch spans (its number of events, when they follow on)
    sealed: bool  # its writer's fences are sealed: so must a fence of this claim be


@dataclass
class ClaimStats:
    """What one process's claims cost on the feed's head, counted since it opened the
    store (or forked): each claim round is one Paxos round on the head's partition."""

    won: int = 0  # rounds applied
    lost: int = 0  # rounds not applied: another writer had moved the head (tried again)
    failed: int = 0  # rounds that raised (a timeout, overload): tried again, or given up
    claims: int = 0  # positions claimed (one per batch; a round won claims those queued)

    @property
    def rounds(self) -> int:
        """Claim rounds sent to the head."""
        return self.won + self.lost + self.failed


class CassandraFeed:
    """Claims feed positions for saves, and reads the feed (docs/feed.md).

    ``connection`` gives the process's connection (the store's: a fresh one after
    fork), ``fences`` the store's fences (its application's). A process's concurrent
    claims share Paxos rounds through a :class:`Batcher`, so its threads never compete
    with each other for the head. ``stats`` counts what the claims cost (a benchmark
    reads it: bench/feed_scale.py).
    """

    positions = True  # a save's claims are its positions (an Appended tells them)
    mark = "position"  # the events' column that carries what a save claimed

    def __init__(
        self,
        settings: Settings,
        connection: Callable[[], Connection],
        fences: Callable[[], Fences],
    ) -> None:
        self.settings = settings
        self.url = settings.url
        self.bucket = FEED_BUCKET
        self._connection = connection
        self._fences = fences
        self._next_position: int | None = None  # a guess of the head: Paxos checks it
        self._pid = os.getpid()
        self._claims = Batcher(self._claim_group, CLAIMS_PER_WRITE)
        self.stats = ClaimStats()  # updated by the one thread that leads a claim round
        self._ahead: Ahead[Fetch] = Ahead()

    # -- writing: claims

    def check(self, batch: Sequence[Record]) -> None:
        """Refuse, before anything is sent, a batch too large for its events' positions."""
        if span(batch) > MAX_FEED_BATCH:
            raise StoreError(
                f"{self.url}: aggregate {batch[0].originator_id}: the batch of {len(batch)} "
                f"events spans {span(batch)} versions; with the feed on, a save holds at most "
                f"{MAX_FEED_BATCH} events of one aggregate (an event's feed position has 16 "
                "bits for its place in its batch). Save in smaller batches. Nothing was written."
            )

    def claim(self, batches: Sequence[Sequence[Record]]) -> list[int]:
        """The feed positions claimed for these batches (combined with the claims of
        other threads' saves in flight), or StoreError: none of them was stored."""
        if self._pid != os.getpid():
            # A claim in flight in the parent's threads is not ours.
            self._pid, self._claims = os.getpid(), Batcher(self._claim_group, CLAIMS_PER_WRITE)
            self.stats = ClaimStats()
        sealed = self._fences().sealed
        requests = [
            Claim(b[0].originator_id, min(r.originator_version for r in b), span(b), sealed)
            for b in batches
        ]
        try:
            return self._claims.submit(requests)
        except StoreError as failure:
            kind = CutOver if isinstance(failure, CutOver) else StoreError
            raise kind(f"{self.url}: {what(batches)} was not stored: {failure}") from (
                failure.__cause__
            )

    def _claim_group(self, group: list[Slot[Claim, int]]) -> None:
        """Claim consecutive positions for the group, in one Paxos round per bucket it
        touches (and one more per round another writer won)."""
        connection = self._connection()
        position = self._next_position
        if position is None:
            position = self.find_head()
        attempts = failures = 0
        pending = group
        while pending:
            bucket = position // self.bucket
            take = pending[: (bucket + 1) * self.bucket - position]
            statement = BatchStatement(batch_type=BatchType.UNLOGGED)
            expected = None if position % self.bucket == 0 else position
            statement.add(
                connection.statements.claim_head, (position + len(take), bucket, expected)
            )
            for n, slot in enumerate(take):
                r = slot.request
                row = (
                    bucket,
                    position + n,
                    r.originator_id,
                    r.originator_version,
                    r.size,
                    r.sealed,
                )
                statement.add(connection.statements.claim_row, row)
            try:
                result = connection.session.execute(statement)
            except DRIVER_ERRORS as exc:
                # Nothing of the batches is written yet, so retrying is safe: a claim
                # that was in fact made is left without events, and readers void or
                # fence it like any abandoned claim.
                self.stats.failed += 1
                failures += 1
                if failures > CLAIM_RETRIES or isinstance(exc, NoHostAvailable):
                    self._next_position = None
                    raise StoreError(f"cannot claim its feed position ({describe(exc)})") from exc
                continue
            if result.was_applied:
                self.stats.won += 1
                self.stats.claims += len(take)
                for n, slot in enumerate(take):
                    slot.resolve(position + n)
                pending = pending[len(take) :]
                position += len(take)
                self._next_position = position
                continue
            if column(result, "epoch") is not None:
                self._next_position = None
                raise CutOver(self._cut_over(position // self.bucket))
            self.stats.lost += 1
            attempts += 1
            if attempts >= CLAIM_ATTEMPTS:
                self._next_position = None
                raise StoreError(
                    f"{attempts} attempts to claim a feed position all lost to other writers"
                )
            head = column(result, "head")
            # No head: the guess named a bucket not begun yet; look for the real one.
            position = self.find_head() if head is None else head

    def _cut_over(self, bucket: int) -> str:
        """Why no claim is made or read past ``bucket``: the keyspace was cut over."""
        return (
            f"the keyspace's feed was cut over to the sequenced feed (its bucket {bucket} "
            "says so): claims are no longer made nor read in it; open the store with "
            'feed=sequenced in its URL (docs/feed.md, "Cutover")'
        )

    def insert(self, connection: Connection) -> Any:
        """The events' conditional insert, carrying the claim's position."""
        return connection.statements.insert_event

    def value(self, mark: Any) -> Any:
        """What an event row carries for its batch's claim: the position."""
        return mark

    def saved(self) -> None:
        """A save's events are written (nothing to note: its claims are in the feed)."""

    def close(self) -> None:
        """Nothing runs in the background for claims."""

    def head_position(self) -> int:
        """The first event position of the feed's next free claim: every event given a
        position from now on is given one at or past it."""
        return self.find_head() << INDEX_BITS

    def find_head(self) -> int:
        """The feed's next free position, as far as a read can tell (Paxos checks it).

        Buckets are begun in order and never removed: double the bucket number until
        one does not exist, then halve the gap: O(log n) reads.
        """
        connection = self._connection()

        def head_of(bucket: int) -> int | None:
            try:
                row = connection.session.execute(connection.statements.select_head, (bucket,))
            except DRIVER_ERRORS as exc:
                raise StoreError(
                    f"cannot claim its feed position: cannot read the feed's head ({exc})"
                ) from exc
            found = row.one()
            return None if found is None else found[0]

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
        return head_of(low) or low * self.bucket

    def abandon(self, position: int) -> None:
        """Say on a claim that its events were never written, so that readers void it
        at once instead of fencing it later. Sent without waiting: only a hint."""
        params = (position // self.bucket, position)
        connection = self._connection()
        try:
            future = connection.session.execute_async(connection.statements.abandon_claim, params)
        except DRIVER_ERRORS as exc:
            log.debug("%s: no hint on feed claim %d: %s", self.url, position, exc)
            return
        future.add_errback(
            lambda exc: log.debug("%s: no hint on feed claim %d: %s", self.url, position, exc)
        )

    # -- reading

    def read(self, after: int = 0, limit: int = 1000) -> list[Record]:
        """At most ``limit`` event records after position ``after``, in feed order.

        Claims are taken in position order and each resolved before the next: its
        events (emitted), void, or fenced once older than ``feed_fence_after``. The
        page ends early at a claim still in flight, so nothing is ever returned past
        a claim that could yet be stored. The claims after those being resolved, and
        their events, are fetched meanwhile (fetch.py); a full page also starts the
        fetch of the next page (read ahead, for this thread's next read).
        """
        after = max(after, 0)
        start = after >> INDEX_BITS  # the claim of that position, whose later events are due
        connection = self._connection()
        fetch = self._ahead.take(connection, after)
        if fetch is None:
            fetch = self._fetch(connection, start, limit)
        found: list[Record] = []
        while True:
            fetch.wait(self.url)
            # The claims that follow, fetched while these are resolved (a guess: void
            # claims give no events, so one more fetch may be needed after all).
            wanted = limit - len(found) - fetch.events
            following = None
            if fetch.complete and wanted > 0:
                following = self._fetch(connection, fetch.first + len(fetch.claims), wanted)
            for claim, read in zip(fetch.claims, fetch.reads, strict=True):
                records = self._resolve(claim, read, fetch.fresh)
                if records is None:
                    return found  # a claim in flight: nothing may pass it
                if claim.position == start:  # the one claim that may hold events read before
                    records = [r for r in records if r.position > after]  # type: ignore[operator]
                found += records
                if len(found) >= limit:
                    # The next read most likely goes on from this page's last event: from
                    # this claim if the page ends inside it, else from the next.
                    first = claim.position + (len(found) == limit)
                    ahead = self._fetch(connection, first, limit, fresh=False)
                    self._ahead.put(connection, found[limit - 1].position or 0, ahead)
                    return found[:limit]
            if not fetch.complete and fetch.fresh:
                return found  # the newest claim (or one not visible yet) was reached
            # (A fetch made ahead may have stopped short of claims made since: look again.)
            fetch = following or self._fetch(
                connection, fetch.first + len(fetch.claims), limit - len(found)
            )

    def _fetch(self, connection: Connection, first: int, wanted: int, fresh: bool = True) -> Fetch:
        """Claims from ``first`` that ``wanted`` events can fill, and their events: sent."""
        return Fetch(
            connection,
            first,
            min(CLAIMS_PER_READ, wanted + 1),
            wanted,
            self.bucket,
            fresh=fresh,
            timeout=self.settings.request_timeout * 2,
            queries=self._queries(connection),
        )

    def _resolve(
        self, claim: ClaimRow, read: Read | SharedRead | None, fresh: bool
    ) -> list[Record] | None:
        """A claim's records, [] for a void claim, or None while it may yet be stored."""
        records = self._claimed(claim, read)
        if records is None and not fresh:
            records = self._claimed(claim, self._send(claim))  # fetched a while ago: look again
        if records == []:
            self._check_claims(claim)
        if records is not None:
            return records
        if claim.abandoned:
            # Its writer knows its write never began (and claims anew to retry).
            return []
        if claim.now * 1000 - claim.written < self.settings.feed_fence_after * 1_000_000:
            return None  # young: its writer is most likely still at work
        self._fence(claim)
        # Fenced, or the batch is there (Paxos completed it first): read through Paxos,
        # which sees what the fence saw even below QUORUM.
        return self._claimed(claim, self._send(claim, serial=self.settings.serial_consistency))

    def _check_claims(self, claim: ClaimRow) -> None:
        """Refuse to void a claim in a bucket that the cutover switched: the rows from the
        switch on are the sequencer's, whose events carry intents, not positions (a reader
        of claims would find them all void). Asked only of void claims, which are rare."""
        connection = self._connection()
        bucket = claim.position // self.bucket
        try:
            row = connection.session.execute(connection.statements.select_epoch, (bucket,)).one()
        except DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc
        if row is not None and row[0] is not None:
            raise CutOver(f"{self.url}: cannot read the feed: {self._cut_over(bucket)}")

    def _send(self, claim: ClaimRow, serial: str | None = None) -> Read:
        connection = self._connection()
        try:
            return send(connection, claim, serial, self._queries(connection))
        except DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc

    def _claimed(self, claim: ClaimRow, read: Read | SharedRead | None) -> list[Record] | None:
        """What a claim's events read (None: not sent yet) found: its records, [] if another
        batch holds its first version, or None if that version is not stored (yet)."""
        originator_id, first, mark = (
            claim.originator_id,
            claim.originator_version,
            self._mark(claim),
        )
        base = (claim.position << INDEX_BITS) - first + 1
        if read is None:
            read = self._send(claim)
        try:
            if isinstance(read, SharedRead):
                stored = read.stored(mark)
                if stored and stored[0][0] == first:  # its first version carries its mark
                    return [Record(originator_id, v, t, d, base + v) for v, t, d, _ in stored]
                read = self._send(claim)  # not stored there: a read of its own says why
            rows = carried(read.rows(), first, mark)  # in version order, from its first
        except DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc
        if rows is None:
            return None
        return [Record(originator_id, v, t, d, base + v) for v, t, d, _ in rows]

    def _mark(self, claim: ClaimRow) -> Any:
        """What the rows of a claim's batch carry: its position."""
        return claim.position

    def _queries(self, connection: Connection) -> Queries:
        """The statements that read claims and their events."""
        statements = connection.statements
        return Queries(
            statements.select_claims, statements.select_claimed, statements.select_shared
        )

    def _fence(self, claim: ClaimRow) -> None:
        """Fence off an abandoned claim (resolution.fence)."""
        connection = self._connection()
        abandoned = Abandoned(
            claim.originator_id,
            claim.originator_version,
            claim.sealed,
            claim.position,
            f"position {claim.position}",
            "claim",
            (claim.now * 1000 - claim.written) / 1e6,
        )
        fence(self.url, connection, self._fences(), connection.statements.insert_event, abandoned)


def span(batch: Sequence[Record]) -> int:
    """The versions a batch spans: its number of events, when they follow on."""
    versions = [r.originator_version for r in batch]
    return max(versions) - min(versions) + 1
