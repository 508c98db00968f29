"""The sequenced feed (feed=sequenced): saves write intents (intents.py), a sequencer publishes
them (sequencer.py), and readers read what is published (docs/feed.md, "Sequencing after the
write"). The store holds a :class:`SequencedFeed` in place of a :class:`CassandraFeed`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from cairn.errors import StoreError
from cairn.stores.cassandra import copies
from cairn.stores.cassandra.feed import CLAIMS_PER_READ, INDEX_BITS, CassandraFeed, span
from cairn.stores.cassandra.fetch import (
    Ahead,
    ClaimRow,
    Fetch,
    Pipeline,
    Queries,
    Read,
    SharedRead,
    send,
)
from cairn.stores.cassandra.intents import Intent, Intents, now_ms
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS, what
from cairn.stores.cassandra.sequencer import PUBLISHED_ROW, Sequencer
from cairn.stores.cassandra.session import Connection
from cairn.stores.cassandra.settings import Settings
from cairn.stores.cassandra.statements import sequenced
from cairn.stores.contract import Fences, Record

IDLE_PAUSE = 0.1  # seconds between a sequencer's steps when nothing happens
BUSY_FOR = 1.0  # seconds a save or a reader at the head keeps the sequencer at its pace
# Fetches a reader reading on from its last page keeps in flight ahead of the one it takes
# from (each at most a page of events): the node reads them at once (docs/feed.md,
# "Catching up on Cassandra"). A reader's first page fetches one ahead.
FETCHES_AHEAD = 4
# When this process's last save to a keyspace returned (ms): a read that reaches the end
# of the feed waits for the sequencer to close past it, so that the save is in the page.
_SAVED: dict[str, int] = {}

log = logging.getLogger(__name__)


class SequencedFeed(CassandraFeed):
    """Intents for saves, a sequencer run in a background thread (started by the first save
    or read, stopped by :meth:`close`), and a reader of published batches, which are final:
    it never waits on one, nor fences one. A reader that reaches the end waits (a little)
    for the sequencer to have settled every intent older than the read, so that a save is
    in the feed of a read that begins after it."""

    positions = False  # a save's positions are given later, by the sequencer
    mark = "intent"

    def __init__(
        self,
        settings: Settings,
        connection: Callable[[], Connection],
        fences: Callable[[], Fences],
    ) -> None:
        super().__init__(settings, connection, fences)
        self.intents = Intents(settings, connection)
        self._keyspace = f"{settings.contact_points}/{settings.keyspace}"
        self.sequencer = self._new_sequencer()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._busy_until = 0.0
        self._thread_lock = threading.Lock()
        self._thread_pid = os.getpid()
        self._pipelines: Ahead[Pipeline] = Ahead()
        # Where the claims end (a keyspace cut over), read once: 0 if the keyspace had no
        # origin yet (then claims are read one by one), and whether the origin said so.
        self._end: int | None = None
        self._end_known = False
        # False: no thread; the sequencer runs only when called (sequence_once), and a
        # reader at the end of the feed does not wait for it (tests drive it so).
        self.background = True

    def _new_sequencer(self) -> Sequencer:
        return Sequencer(self.settings, self._connection, self._fences, self.intents, self.bucket)

    # -- writing

    def claim(self, batches: Sequence[Sequence[Record]]) -> list[Intent]:  # type: ignore[override]
        """The intents of these batches, written and checked (their events carry them), or
        StoreError: none of them was stored."""
        self.start()
        sealed = self._fences().sealed
        wanted = [
            (b[0].originator_id, min(r.originator_version for r in b), span(b)) for b in batches
        ]
        try:
            intents = self.intents.write(wanted, sealed)
        except StoreError as failure:
            raise StoreError(
                f"{self.url}: {what(batches)} was not stored: {failure}"
            ) from failure.__cause__
        return intents

    def saved(self) -> None:
        """A save's events are written: a read of this process that begins after it waits
        for it to be published."""
        _SAVED[self._keyspace] = max(_SAVED.get(self._keyspace, 0), now_ms())

    def insert(self, connection: Connection) -> Any:
        """The events' conditional insert, carrying the intent."""
        prepared = sequenced(connection.statements)
        return prepared.insert_event

    def value(self, mark: Intent) -> UUID:
        """What an event row carries for its batch: the intent's id."""
        return mark.id

    def abandon(self, mark: Intent) -> None:  # type: ignore[override]
        self.intents.abandon(mark)

    # -- the sequencer's thread

    def start(self, busy: bool = True) -> None:
        """Run the sequencer in the background, if it is not running yet in this process;
        if ``busy``, keep it at its pace for a while (a save, or a read at the head, wants
        it)."""
        if busy:
            self._busy_until = time.monotonic() + BUSY_FOR
        if not self.background or (self._thread is not None and self._thread_pid == os.getpid()):
            return
        with self._thread_lock:
            if self._thread_pid != os.getpid():  # forked: the parent's thread is not here
                self._thread_pid, self.sequencer = os.getpid(), self._new_sequencer()
                self._thread, self._stop = None, threading.Event()
            if self._thread is None and not self._stop.is_set():
                self.intents.origin()  # before any step: every shard closed at the cursor
                self._thread = threading.Thread(
                    target=_run,
                    args=(weakref.ref(self), self._stop, self._wake),
                    name=f"cairn-sequencer {self.settings.keyspace}",
                    daemon=True,
                )
                self._thread.start()
        self._wake.set()

    def _pause_after_step(self) -> float:
        """One step of the sequencer (or of its candidacy); the seconds to wait before the
        next: a window while there is work, longer when idle, longer still while another
        process holds the lease or steps fail (a keyspace dropped, a node away). Steps
        holding the lease begin a pause apart: one that took longer is followed at once."""
        began = time.monotonic()
        try:
            holding = self.sequencer.sequence_once()
        except Exception:  # (a thread's last resort: log, and go on)
            log.exception("%s: the sequencer failed", self.url)
            holding = False
        if not holding:
            # Another process holds the lease: poll every half lease (a takeover waits
            # at most that more than the lease; every process polls, so each seldom).
            # A step failed (a timeout on a loaded cluster, a node away, the keyspace
            # dropped): try again soon, then less and less often, but within half a
            # lease, so that a holder keeps a lease that a timeout interrupted.
            failures = min(self.sequencer.failures, 32)  # (2 ** failures: a float after)
            poll = self.settings.sequencer_lease / 2
            return poll if not failures else min(self.settings.window / 1000 * 2**failures, poll)
        busy = self.sequencer.found_any or time.monotonic() < self._busy_until
        pause = self.settings.window / 1000 if busy else IDLE_PAUSE
        return max(pause - (time.monotonic() - began), 0.0)

    def close(self) -> None:
        """Stop the sequencer, and give up its lease."""
        self._stop.set()
        self._wake.set()
        if self._thread_pid != os.getpid():
            return  # (a forked child: the parent's sequencer is not this process's)
        if self._thread is not None:
            self._thread.join(timeout=self.settings.request_timeout * 2)
        self.sequencer.release()

    # -- reading

    def read(self, after: int = 0, limit: int = 1000) -> list[Record]:
        """At most ``limit`` published event records after ``after``, in feed order; at the
        end of the feed, those of this process's saves made before the read too (it waits
        for the sequencer to publish them)."""
        # A reader catching up far behind the head does not need the sequencer at its pace
        # (a step every window: 2 x shards requests, a third of a reader's CPU per event).
        self.start(busy=False)
        found = self._read_published(after, limit)
        if len(found) < limit:
            self.start()  # at the head: what it waits for next is the sequencer's to publish
        saved = _SAVED.get(self._keyspace)
        if len(found) < limit and self.background and saved and self._settled_past(saved):
            last = found[-1].position if found else after
            found += self._read_published(last or 0, limit - len(found))
        blocked = self.sequencer.blocked
        if not found and blocked is not None:
            raise blocked
        return found

    def _read_published(self, after: int, limit: int) -> list[Record]:
        """At most ``limit`` published event records after ``after``, in feed order, taken
        from a :class:`Pipeline` of fetches: published rows are final, so fetches made
        ahead are resolved as they are. A full page holds its pipeline for this thread's
        next read from its last position, which then keeps FETCHES_AHEAD in flight."""
        after = max(after, 0)
        start = after >> INDEX_BITS  # the batch of that position, whose later events are due
        connection = self._connection()
        pipeline = self._pipelines.take(connection, after)
        if pipeline is None:

            def make(first: int, fresh: bool) -> Fetch:
                return self._fetch(connection, first, limit, fresh=fresh)

            pipeline = Pipeline(make, start)
        else:
            pipeline.read_on(FETCHES_AHEAD)  # (a reader reading on: catching up, most likely)
        found: list[Record] = []
        while (taken := pipeline.next(self.url)) is not None:
            claim, read = taken
            # (A claim, made before a cutover, fetched ahead: looked at again if not found.)
            records = self._resolve(claim, read, fresh=claim.intent is not None)
            if records is None:  # such a claim, its writer still at work: the page ends here
                return found
            if claim.position == start:  # the one batch that may hold events read before
                records = [r for r in records if r.position > after]  # type: ignore[operator]
            found += records
            if len(found) >= limit:
                if len(found) > limit:
                    pipeline.back()  # the next page begins inside this batch
                self._pipelines.put(connection, found[limit - 1].position or 0, pipeline)
                return found[:limit]
        return found

    def refresh_copies(self, progress: Callable[[int], None]) -> int:
        """Make every published row's copy again from its batch's rows, once the sequencer
        has settled past now (the tools that rewrite events call it after their rewrite:
        copies.refresh); how many rows were passed over. StoreError if no sequencer settled
        within a few leases (the copies are then as they were: run the tool again)."""
        self.start()  # (so that a sequencer runs, were no other process running one)
        settled = max(now_ms(), self.sequencer.published_until, self._published_until())
        if not self._settled(settled):
            raise StoreError(
                f"{self.url}: the feed's copies were not refreshed: no sequencer settled the "
                "feed past the rewrite in time; run the rewrite again (it rewrites nothing "
                "twice, and refreshes the copies)"
            )
        connection = self._connection()
        try:
            return copies.refresh(
                connection.session,
                sequenced(connection.statements),
                self._claims_end(connection),
                self.bucket,
                progress,
            )
        except DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: the feed's copies were not refreshed: {exc}") from exc

    def _settled(self, after: int) -> bool:
        """Wait until a step of a sequencer begun after the time ``after`` (ms; later than
        every step's close known before) is over: every copy written from rows read before
        it is written then, and later steps read the rows as they are now."""
        for _ in range(3):  # (a lease each: time for a dead holder's lease to pass)
            self._settled_past(after)
            if self.sequencer.published_until > after or self._published_until() > after:
                return True
        return False

    def _settled_past(self, saved: int) -> bool:
        """Wait until the sequencer has closed, resolved and published past ``saved`` (ms);
        False if it had already, or no sequencer did within the lease (then it is read
        later)."""
        sequencer = self.sequencer
        if sequencer.published_until > saved:
            return False
        deadline = time.monotonic() + self.settings.sequencer_lease + 1
        while time.monotonic() < deadline:
            if sequencer.holding:
                with sequencer.progress:
                    sequencer.progress.wait_for(
                        lambda: sequencer.published_until > saved or not sequencer.holding,
                        timeout=max(deadline - time.monotonic(), 0),
                    )
                if sequencer.published_until > saved:
                    return True
            elif self._published_until() > saved:
                return True
            else:
                time.sleep(self.settings.window / 1000)
        return False

    def _published_until(self) -> int:
        """How far another process's sequencer says it has settled every intent (ms)."""
        connection = self._connection()
        prepared = sequenced(connection.statements)
        try:
            row = connection.session.execute(prepared.select_close, (PUBLISHED_ROW,)).one()
        except DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc
        return 0 if row is None or row[0] is None else int(row[0])

    def _queries(self, connection: Connection) -> Queries:
        prepared = sequenced(connection.statements)
        return Queries(
            prepared.select_published,
            prepared.select_carried,
            prepared.select_carried_shared,
            copies.matches,
        )

    def _mark(self, claim: ClaimRow) -> Any:
        """What the rows of a batch carry, as the reader reads them: a published batch's
        intent's bytes (SELECT_CARRIED), a claim's position (one made before a cutover)."""
        return claim.position if claim.intent is None else claim.intent.bytes

    def _fetch(self, connection: Connection, first: int, wanted: int, fresh: bool = True) -> Fetch:
        if first >= self._claims_end(connection):
            return super()._fetch(connection, first, wanted, fresh)
        # Claims made before the keyspace was cut over: fetched as a claims' reader fetches
        # them (their events carry positions), never past the switch.
        return Fetch(
            connection,
            first,
            min(CLAIMS_PER_READ, wanted + 1, self._claims_end(connection) - first),
            wanted,
            self.bucket,
            fresh=fresh,
            timeout=self.settings.request_timeout * 2,
            queries=CassandraFeed._queries(self, connection),
        )

    def _claims_end(self, connection: Connection) -> int:
        """The first position that is not a claim (0 in a keyspace made sequenced), as the
        keyspace's origin says; 0 if it had none yet (then claims are read one by one:
        _resolve). Read once, so that every fetch of this reader is of the kind that its
        resolution expects."""
        if self._end is None:
            prepared = sequenced(connection.statements)
            try:
                row = connection.session.execute(prepared.select_claims_end).one()
            except DRIVER_ERRORS as exc:
                raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc
            self._end_known = row is not None and row[0] is not None
            self._end = int(row[1] or 0) if self._end_known else 0
        return self._end

    def _send(self, claim: ClaimRow, serial: str | None = None) -> Read:
        if claim.intent is not None:
            return super()._send(claim, serial)
        # A claim made before the cutover: its events carry its position (as a claims'
        # reader reads them).
        connection = self._connection()
        try:
            return send(connection, claim, serial, CassandraFeed._queries(self, connection))
        except DRIVER_ERRORS as exc:
            raise StoreError(f"{self.url}: cannot read the feed: {exc}") from exc

    def _check_claims(self, claim: ClaimRow) -> None:
        """(Claims before the cutover's switch are this reader's to resolve.)"""

    def _resolve(
        self, claim: ClaimRow, read: Read | SharedRead | None, fresh: bool
    ) -> list[Record] | None:
        """A published batch's records: from its row's copy if that is of its batch
        (copies.records), else from its events; final, so never waited on nor fenced (read
        again through Paxos if a read below QUORUM missed them). A row without an intent is
        a claim made before the keyspace was cut over: resolved as a claims' reader does
        (waited on, fenced once abandoned), from its fetch (_fetch), or from a read of its
        own if it was fetched with published batches (whose reads are of intents)."""
        if claim.intent is None:
            if claim.position >= (self._end or 0):
                read, fresh = self._send(claim), True
                if self._end_known:
                    _stray(self.url, claim)
            return super()._resolve(claim, read, fresh)
        if claim.copy is not None:
            records = copies.records(claim)
            if records is not None:
                return records
        records = self._claimed(claim, read)  # (its events read, sent now if the copy spared it)
        if records is None:
            serial = self.settings.serial_consistency
            records = self._claimed(claim, self._send(claim, serial=serial))
        if records is None:
            raise StoreError(
                f"{self.url}: the feed's position {claim.position} names aggregate "
                f"{claim.originator_id} version {claim.originator_version}, which is not stored"
            )
        return records


def _stray(url: str, claim: ClaimRow) -> None:
    """Say that a claim was made after the keyspace's switch (by a writer of a cairn that
    does not check it, which the cutover's step 1 was to stop): read as any claim, its
    batch may come before an earlier batch of its aggregate."""
    log.error(
        "%s: the feed's position %d is a claim made after the keyspace was cut over, by a "
        "writer of an earlier cairn (aggregate %s version %d): stop every process of an "
        "earlier cairn; its batch may be out of its aggregate's order",
        url,
        claim.position,
        claim.originator_id,
        claim.originator_version,
    )


def _run(feed: weakref.ref[SequencedFeed], stop: threading.Event, wake: threading.Event) -> None:
    """The sequencer's thread: steps until its feed is closed, or dropped unclosed (it holds
    the feed weakly, so that a store nobody closed does not sequence for ever)."""
    while not stop.is_set() and not sys.is_finalizing():
        held = feed()
        if held is None:
            return
        pause = held._pause_after_step()
        del held
        wake.wait(pause)
        wake.clear()
