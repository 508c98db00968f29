"""The sequencer of a keyspace's sequenced feed (feed=sequenced): one process at a time holds
its lease, closes windows of intents, resolves each intent as a claims' reader resolves a
claim, and publishes the stored batches at consecutive positions, many in one Paxos round
(docs/feed.md, "Sequencing after the write", which tells why each step is safe).

:meth:`Sequencer.sequence_once` is one step (taking the lease first if it is free); the
store's feed runs steps in a background thread (sequenced.py), and tests call it directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from cassandra import ConsistencyLevel
from cassandra.query import BatchStatement, BatchType

from cairn.errors import FenceNeedsKey, StoreError
from cairn.stores.cassandra import copies
from cairn.stores.cassandra.copies import Copy
from cairn.stores.cassandra.intents import INTENT_BUCKET_MS, Intents, close_windows, now_ms, time_of
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS, column, describe
from cairn.stores.cassandra.resolution import Abandoned, carried, fence, read_marks
from cairn.stores.cassandra.session import Connection
from cairn.stores.cassandra.settings import Settings
from cairn.stores.cassandra.statements import sequenced
from cairn.stores.contract import Fences

PUBLISH_ROWS = 250  # batches published in one Paxos round, at most
PUBLISHED_ROW = -1  # the row of `closes` that says how far every intent is resolved
# A step closes at most this much time (catching up goes in steps). More than a step can
# take on a loaded cluster: were it less, a sequencer behind would fall further behind.
MAX_STEP_MS = 5 * INTENT_BUCKET_MS

log = logging.getLogger(__name__)


class Deposed(Exception):
    """Another process took the lease: this one's publish was refused."""


@dataclass
class Found:
    """An intent the sequencer scanned and has not settled yet."""

    intent: UUID
    originator_id: Any
    first: int
    size: int
    abandoned: bool
    sealed: bool | None
    age: float  # seconds old when scanned, on the node's clock
    seen: float  # when scanned, on this process's monotonic clock
    copy: Copy | None = None  # its published row's copy, once resolved (copies.py)

    def older_than(self, seconds: float) -> bool:
        return self.age + time.monotonic() - self.seen >= seconds


@dataclass
class Lease:
    """The lease this sequencer holds, and where the feed's head is."""

    epoch: int
    bucket: int  # the newest bucket, whose statics hold the lease
    head: int  # the next position
    renewed: int
    renewed_at: float  # monotonic


class Sequencer:
    """Publishes a keyspace's intents in one order; one process's candidate for the lease.

    ``fences`` gives the store's fences (its application's), ``feed_bucket`` the feed's
    positions per partition. Not thread-safe on its own: a lock runs one step at a time.
    """

    def __init__(
        self,
        settings: Settings,
        connection: Callable[[], Connection],
        fences: Callable[[], Fences],
        intents: Intents,
        feed_bucket: int,
    ) -> None:
        self.settings, self.url = settings, settings.url
        self.me = uuid4()
        # ms: a batch stored before this step's close, its intent below it, is published
        self.published_until = 0
        self.blocked: FenceNeedsKey | None = None  # an intent only a keyed process can fence
        self.progress = threading.Condition()
        self.found_any = False  # the last step found intents to settle
        self.failures = 0  # steps failed in a row
        self._connection, self._fences, self._intents = connection, fences, intents
        self._bucket_size = feed_bucket
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._known_bucket = 0  # the newest bucket seen begun (buckets only begin, in order)
        self._closed = 0  # ms: intents below it are scanned
        self._cursor = 0  # ms: the oldest time holding an intent pending (or _closed)
        self._pending: dict[UUID, Found] = {}
        self._published: dict[UUID, int] = {}  # intent -> position, those at or after _cursor
        self._copying: list[Any] = []  # the copies of this step's published rows, sent

    @property
    def scanned_until(self) -> int:
        """The time (ms) below which this sequencer has scanned every intent."""
        return self._closed

    @property
    def holding(self) -> bool:
        """Whether this sequencer holds the lease (as far as it knows)."""
        return self._lease is not None

    def sequence_once(self) -> bool:
        """One step: take the lease if it is free or expired, close and scan the windows due,
        settle what was found, publish; False if another process holds the lease."""
        with self._lock:
            try:
                if self._lease is None and not self._acquire():
                    self.blocked = None  # the holder fences what this one could not
                    return False
                self._step()
                self.failures = 0
                if self.blocked is not None:
                    # Only a process with the key can fence what holds the feed: let one
                    # take the lease.
                    self._release()
                    return False
                return True
            except Deposed:
                log.info("%s: the sequencer's lease was taken over", self.url)
                self._lease = None
                return False
            except (*DRIVER_ERRORS, StoreError) as exc:
                # Whatever was in flight may or may not be done: start again from the
                # stored cursor, the lease kept if it is still ours.
                log.warning("%s: sequencer step failed: %s", self.url, exc)
                self._lease = None
                self.failures += 1
                return False

    def release(self) -> None:
        """Give up the lease (the store closes), so that another process takes it at once."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            self._publish_round(lease, [], release=True)
        except (*DRIVER_ERRORS, Deposed, StoreError) as exc:
            log.info("%s: the sequencer's lease was not released: %s", self.url, exc)

    # -- the lease

    def _acquire(self) -> bool:
        """Take the lease if this sequencer holds it already, or it is free or expired;
        then load the state to go on from: the stored cursor, and what is published since."""
        self._intents.origin()  # (made once: the first cursor)
        if self._held_elsewhere():
            return False
        bucket = self._newest_bucket()
        row = self._statics(bucket)
        head, epoch, holder, renewed, cursor, cursor_head, written, now = row
        if holder != self.me and not self._expired(holder, written, now):
            return False
        full = head == (bucket + 1) * self._bucket_size
        epoch = (epoch or 0) + (holder != self.me)
        lease = Lease(epoch, bucket, head, (renewed or 0) + 1, time.monotonic())
        if full:  # a takeover at a full bucket begins the next one
            lease.bucket += 1
            if not self._begin(lease, cursor, cursor_head):
                return False
        elif holder != self.me:
            params = (epoch, self.me, lease.renewed, bucket, row[1], renewed)
            if not self._execute(self._prepared().take_lease, params).was_applied:
                return False
        self._lease = lease
        self._load(cursor, cursor_head or 0, head)
        log.info("%s: sequencer %s holds the lease, epoch %d", self.url, self.me, epoch)
        return True

    def _held_elsewhere(self) -> bool:
        """Whether a plain read (no Paxos) of the newest bucket this candidate knows of
        shows another process's lease, renewed within the lease, in a bucket with room:
        then it need not read through Paxos, on the partition the holder publishes to
        (a candidate per process, each polling by Paxos, slowed every publish). A stale
        view only puts a takeover off to the next poll: every takeover reads and
        conditions through Paxos."""
        row = self._statics(self._known_bucket, serial=False)
        head, _, holder, _, _, _, written, now = row
        if head is None or holder is None or holder == self.me:
            return False
        full = head == (self._known_bucket + 1) * self._bucket_size
        return not full and not self._expired(holder, written, now)

    def _expired(self, holder: Any, written: int | None, now: int) -> bool:
        """Whether a lease (its holder, its renewal's write time in microseconds, the
        node's clock in milliseconds) is free, or was not renewed in time."""
        age = (now * 1000 - (written or 0)) / 1e6
        return holder is None or age > self.settings.sequencer_lease

    def _newest_bucket(self) -> int:
        """The newest begun bucket of the feed (buckets are begun in order)."""
        if self._lease is not None:
            return self._lease.bucket
        low, high = self._known_bucket, self._known_bucket + 1
        while self._statics(high)[0] is not None:
            low, high = high, high * 2
        while high - low > 1:
            middle = (low + high) // 2
            if self._statics(middle)[0] is None:
                high = middle
            else:
                low = middle
        self._known_bucket = low
        return low

    def _statics(self, bucket: int, serial: bool = True) -> tuple[Any, ...]:
        """A bucket's static columns, read through Paxos (a round in flight is completed),
        or with ``serial`` False at the store's consistency."""
        statement = self._prepared().select_statics.bind((bucket,))
        if serial:
            statement.consistency_level = ConsistencyLevel.name_to_value[
                self.settings.serial_consistency
            ]
        row = self._connection().session.execute(statement).one()
        return tuple(row) if row is not None else (None,) * 8

    def _begin(self, lease: Lease, cursor: int, cursor_head: int) -> bool:
        """Begin the bucket ``lease`` names, empty, with the lease in it; False if another
        process began it first."""
        params = (
            lease.head, lease.epoch, self.me, lease.renewed, cursor, cursor_head,
            lease.bucket, None, None,
        )  # fmt: skip
        return bool(self._execute(self._prepared().publish, params).was_applied)

    def _load(self, cursor: int, cursor_head: int, head: int) -> None:
        """Go on from ``cursor``: nothing pending, the intents published from ``cursor_head``
        known (a scan from the cursor finds them again, and skips them)."""
        self._cursor = self._closed = cursor
        self._pending = {}
        self._published = {}
        position = cursor_head
        while position < head:
            bucket = position // self._bucket_size
            rows = self._execute(
                self._prepared().select_published, (bucket, position, PUBLISH_ROWS * 4)
            )
            found = [(row[0], row[8]) for row in rows]
            if not found:
                position = (bucket + 1) * self._bucket_size
                continue
            for at, intent in found:
                # (No intent: a claim of an earlier cairn's writer after a cutover's switch.)
                if intent is not None:
                    self._published[intent] = at
            position = found[-1][0] + 1

    # -- a step

    def _step(self) -> None:
        lease = self._lease
        assert lease is not None
        self._copying = []  # (a step that failed: what it sent completes unawaited)
        target = min(now_ms() - self.settings.window, self._closed + MAX_STEP_MS)
        scanned = 0
        if target > self._closed:
            scanned = self._close_and_scan(self._closed, target)
            self._closed = target
        self._renew_if_due(lease)
        ready = self._resolve()
        self.found_any = bool(scanned or self._pending)
        self._renew_if_due(lease)
        self._publish(lease, ready)
        self._copied()
        self._renew_if_due(lease)
        self._mark_published()

    def _renew_if_due(self, lease: Lease) -> None:
        """Renew the lease (and store the cursor) if a third of it has passed since it was
        last renewed: between the parts of a step too, so that a step slower than the
        lease (a loaded cluster) does not lose it to a candidate, which would start again
        from the stored cursor."""
        if time.monotonic() - lease.renewed_at > self.settings.sequencer_lease / 3:
            self._publish_round(lease, [])

    def _close_and_scan(self, start: int, end: int) -> int:
        """Close [start, end) on every shard, then read its intents: the new ones pending."""
        prepared, session = self._prepared(), self._connection().session
        shards = self._intents.origin().shards
        for future in close_windows(session, prepared.close, shards, end):
            future.result()
        every = list(range(shards))  # (one scan a bucket: its shards' partitions by IN)
        scans = [
            session.execute_async(prepared.select_intents, (bucket, every, start, end))
            for bucket in range(start // INTENT_BUCKET_MS, (end - 1) // INTENT_BUCKET_MS + 1)
        ]
        found = 0
        seen = time.monotonic()
        for future in scans:
            for intent, oid, first, size, abandoned, sealed, written, now in future.result():
                if intent in self._published or intent in self._pending:
                    continue
                age = (now * 1000 - (written or 0)) / 1e6
                self._pending[intent] = Found(
                    intent, oid, first, size, bool(abandoned), sealed, age, seen
                )
                found += 1
        return found

    def _resolve(self) -> list[tuple[Found, UUID | None]]:
        """The pending intents whose batches are stored (or fenced), each with the intent
        of the row before its first version (None if none): the void ones dropped."""
        self.blocked = None
        live = [f for f in self._pending.values() if not f.abandoned]
        # Each batch's versions and the one before, in as few reads as they allow.
        spans = [(f.originator_id, max(f.first - 1, 0), f.first + f.size) for f in live]
        prepared = self._prepared()
        marks = read_marks(
            self._connection().session, prepared.select_marks, prepared.select_marks_shared, spans
        )
        reads = {f.intent: m for f, m in zip(live, marks, strict=True)}
        ready: list[tuple[Found, UUID | None]] = []
        for found in list(self._pending.values()):
            if found.abandoned:
                del self._pending[found.intent]
                continue
            rows = reads[found.intent].rows()
            before = (
                rows.pop(0) if found.first > 0 and rows and rows[0][0] == found.first - 1 else None
            )
            outcome = carried(rows, found.first, found.intent)
            if outcome is None and found.older_than(self.settings.feed_fence_after):
                outcome = self._fence(found)
            if outcome is None:
                continue  # in flight: wait
            if not outcome:
                del self._pending[found.intent]  # lost its race (or re-stamped): void
                continue
            found.copy = copies.made(outcome, found.first, found.size, found.intent)
            ready.append((found, None if before is None else before[-1]))
        return ready

    def _read(self, found: Found, serial: bool = False) -> Any:
        """The read of a batch's versions and the one before, sent."""
        statement = self._prepared().select_marks.bind(
            (found.originator_id, max(found.first - 1, 0), found.first + found.size)
        )
        if serial:
            statement.consistency_level = ConsistencyLevel.name_to_value[
                self.settings.serial_consistency
            ]
        return self._connection().session.execute_async(statement)

    def _fence(self, found: Found) -> list[Any] | None:
        """Fence off an intent abandoned past feed_fence_after; what its versions hold then."""
        abandoned = Abandoned(
            found.originator_id,
            found.first,
            found.sealed,
            found.intent,
            f"intent {found.intent}",
            "intent",
            found.age + time.monotonic() - found.seen,
        )
        try:
            fence(
                self.url,
                self._connection(),
                self._fences(),
                self._prepared().insert_event,
                abandoned,
            )
        except FenceNeedsKey as exc:
            self.blocked = exc  # a process with the key fences it (see SequencedFeed.read)
            return None
        rows = [r for r in self._read(found, serial=True).result() if r[0] >= found.first]
        return carried(rows, found.first, found.intent)

    def _publish(self, lease: Lease, ready: list[tuple[Found, UUID | None]]) -> None:
        """Publish the ready batches, each after the batch before it in its aggregate (which
        may be waiting still: then it waits too), in rounds of up to PUBLISH_ROWS."""
        placed: set[UUID] = set()
        ordered: list[Found] = []
        remaining = sorted(ready, key=lambda r: _order(r[0]))
        while True:
            now_ready = [r for r in remaining if self._is_published(r[1], placed)]
            if not now_ready:
                break
            for found, _ in now_ready:
                ordered.append(found)
                placed.add(found.intent)
            remaining = [r for r in remaining if r[0].intent not in placed]
        while ordered:
            room = self._bucket_size - lease.head % self._bucket_size
            take, ordered = ordered[: min(PUBLISH_ROWS, room)], ordered[min(PUBLISH_ROWS, room) :]
            self._publish_round(lease, take)

    def _is_published(self, intent: UUID | None, placed: set[UUID]) -> bool:
        """Whether the batch that carries ``intent`` is published (or is placed before)."""
        if intent is None or intent in placed or intent in self._published:
            return True
        # Below the cursor every intent is settled; one that rows carry was published.
        return intent not in self._pending and time_of(intent) < self._cursor

    def _publish_round(self, lease: Lease, batches: list[Found], release: bool = False) -> None:
        """One conditional batch on the newest bucket: ``batches`` at the head, the head
        moved on, the lease renewed (or released) and the cursor stored, if the head and
        epoch are still those this sequencer knows; else Deposed (or StoreError: start
        again from the stored state). Batches at a full bucket's end begin the next one
        (`IF head = null AND epoch = null`)."""
        begins = bool(batches) and lease.head // self._bucket_size > lease.bucket
        bucket = lease.bucket + begins
        head = lease.head + len(batches)
        for n, found in enumerate(batches):
            self._published[found.intent] = lease.head + n
            self._pending.pop(found.intent, None)
        cursor, cursor_head = self._next_cursor(head)
        statement = BatchStatement(batch_type=BatchType.UNLOGGED)
        prepared = self._prepared()
        expected = (None, None) if begins else (lease.head, lease.epoch)
        holder = None if release else self.me
        renewed = lease.renewed + 1
        statics = (head, lease.epoch, holder, renewed, cursor, cursor_head, bucket, *expected)
        statement.add(prepared.publish, statics)
        for n, found in enumerate(batches):
            row = (
                bucket, lease.head + n, found.originator_id, found.first, found.size,
                found.sealed, found.intent,
            )  # fmt: skip
            statement.add(prepared.publish_row, row)
        sent = time.monotonic()  # (the renewal's write time is when the round began)
        result = self._execute(statement)
        if not result.was_applied:
            if column(result, "epoch") != lease.epoch:
                raise Deposed()
            raise StoreError(f"the feed's head is {column(result, 'head')}, not {lease.head}")
        self._copy(bucket, lease.head, batches)
        lease.bucket, lease.head, lease.renewed = bucket, head, renewed
        lease.renewed_at = sent

    def _copy(self, bucket: int, head: int, batches: list[Found]) -> None:
        """Send the copies of batches just published from ``head`` on: after the publish,
        never before, so that only a holder whose publish was applied writes copies (no
        copy of a deposed holder's batch at a position another batch takes), and never at
        a position not published yet."""
        made = [(head + n, f.copy) for n, f in enumerate(batches) if f.copy is not None]
        for found in batches:
            found.copy = None
        if made:
            session, prepared = self._connection().session, self._prepared()
            self._copying += copies.write_all(session, prepared, bucket, made)

    def _copied(self) -> None:
        """Wait for the copies sent this step: a step is over once they are written (the
        tools that rewrite events rely on it: ``SequencedFeed.refresh_copies``). One that
        failed is only missing: readers read that batch from its events."""
        copying, self._copying = self._copying, []
        for future in copying:
            try:
                future.result()
            except DRIVER_ERRORS as exc:
                log.info("%s: a feed row's copy was not written: %s", self.url, exc)

    def _next_cursor(self, head: int) -> tuple[int, int]:
        """The cursor (the oldest time of an intent still pending, else the close) and the
        first position of an intent published at or after it (else the head)."""
        self._cursor = min((time_of(i) for i in self._pending), default=self._closed)
        self._published = {i: p for i, p in self._published.items() if time_of(i) >= self._cursor}
        return self._cursor, min(self._published.values(), default=head)

    def _mark_published(self) -> None:
        """Say (to readers at the head) how far every intent is scanned and resolved: a
        batch stored before the close of this step is published (or waits for the batch
        before it in its aggregate)."""
        if self._closed <= self.published_until:
            return
        # Sent, not awaited (the next step's round trips need not wait for it): it only
        # tells readers of other processes sooner, and a larger close always wins (its
        # timestamp is its value), so one arriving late, or lost, is harmless.
        params = (self._closed, self._closed, PUBLISHED_ROW)
        try:
            future = self._connection().session.execute_async(self._prepared().close, params)
        except DRIVER_ERRORS as exc:
            log.debug("%s: not marked published: %s", self.url, exc)
        else:
            future.add_errback(lambda exc: log.debug("%s: not marked published: %s", self.url, exc))
        with self.progress:
            self.published_until = self._closed
            self.progress.notify_all()

    # -- requests

    def _prepared(self) -> Any:
        return sequenced(self._connection().statements)

    def _execute(self, statement: Any, params: Iterable[Any] | None = None) -> Any:
        try:
            return self._connection().session.execute(statement, params)
        except DRIVER_ERRORS as exc:
            raise StoreError(describe(exc)) from exc


def _order(found: Found) -> tuple[int, bytes]:
    """The order intents are published in: by time, then id."""
    return time_of(found.intent), found.intent.bytes
