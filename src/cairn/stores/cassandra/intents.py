"""The writing side of the sequenced feed (feed=sequenced): a save's intent, written before its
events where no other save contends, and checked against the sequencer's close of its window
(docs/feed.md, "Sequencing after the write"). Also the keyspace's origin, which every store
makes sure of before it writes or sequences anything, and the intents' identifiers.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cassandra import ConsistencyLevel
from cassandra.query import BatchStatement, BatchType

from cairn.errors import StoreError
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS, describe
from cairn.stores.cassandra.session import Connection
from cairn.stores.cassandra.settings import MAX_SHARDS, Settings
from cairn.stores.cassandra.statements import sequenced

# Part of the stored format: an intent's partition is a second of its time and a shard.
INTENT_BUCKET_MS = 1000
RESTAMPS = 3  # a save whose window is closed this often in a row gives up (nothing stored)
# Shards closed in one request (an unlogged batch of their rows): at most Cassandra's default
# unlogged_batch_across_partitions_warn_threshold, beyond which every close would log a warning.
CLOSES_PER_REQUEST = 10
# The 100-ns intervals from the Gregorian calendar's start to the Unix epoch (RFC 4122).
_UUID_EPOCH = 0x01B21DD213814000


def now_ms() -> int:
    """This process's clock, in milliseconds (the writers' and the sequencer's)."""
    return time.time_ns() // 1_000_000


def timeuuid(ms: int) -> UUID:
    """A new version-1 UUID whose time is ``ms``, its other 62 bits random (unique)."""
    ticks = ms * 10_000 + _UUID_EPOCH
    seq, node = random.getrandbits(14), random.getrandbits(48)
    fields = (
        ticks & 0xFFFFFFFF,
        (ticks >> 32) & 0xFFFF,
        ((ticks >> 48) & 0x0FFF) | 0x1000,
        0x80 | (seq >> 8),
        seq & 0xFF,
        node,
    )
    return UUID(fields=fields)


def time_of(intent: UUID) -> int:
    """An intent's time, in milliseconds."""
    return (intent.time - _UUID_EPOCH) // 10_000


def close_windows(session: Any, statement: Any, shards: int, until: int) -> list[Any]:
    """Close every shard's window until ``until`` (ms; the close's timestamp too, so that a
    later, smaller close loses): sent, a request per CLOSES_PER_REQUEST shards (the
    futures returned). One request a shard cost an idle sequencer most of its CPU."""
    sent = []
    for first in range(0, shards, CLOSES_PER_REQUEST):
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for shard in range(first, min(first + CLOSES_PER_REQUEST, shards)):
            batch.add(statement, (until, until, shard))
        sent.append(session.execute_async(batch))
    return sent


def shard_of(intent: UUID, shards: int) -> int:
    """The shard an intent is written in (by its random bits: spread evenly)."""
    return intent.node % shards


@dataclass(frozen=True)
class Origin:
    """What every process of a keyspace agrees on: its shards, and the first cursor (ms)."""

    shards: int
    cursor: int


@dataclass(frozen=True)
class Intent:
    """A save's note of one aggregate's batch, before its events are written."""

    id: UUID
    originator_id: Any
    originator_version: int  # the batch's first
    size: int  # the versions it spans
    sealed: bool

    def key(self, shards: int) -> tuple[int, int, UUID]:
        """Its row's primary key: (bucket, shard, intent)."""
        return time_of(self.id) // INTENT_BUCKET_MS, shard_of(self.id, shards), self.id


class Intents:
    """Writes a save's intents and checks their windows (re-stamping those closed); knows
    the keyspace's origin. ``clock`` (ms) is the writer's: a test sets it back."""

    def __init__(self, settings: Settings, connection: Callable[[], Connection]) -> None:
        self.settings = settings
        self.url = settings.url
        self.clock: Callable[[], int] = now_ms
        self._connection = connection
        self._origin: Origin | None = None
        self._lock = threading.Lock()

    def origin(self) -> Origin:
        """The keyspace's origin, made by the first process that asks (Paxos), and every
        shard's close at least at its cursor, so that an intent older than the keyspace is
        re-stamped as any in a closed window. Once per process."""
        with self._lock:
            if self._origin is None:
                self._origin = self._make_origin()
            return self._origin

    def _make_origin(self) -> Origin:
        connection = self._connection()
        prepared = sequenced(connection.statements)
        try:
            # Made once by Paxos, never changed: a plain read that finds it is final. Only
            # one that does not reads through Paxos (a round in flight is completed), so
            # that processes opening together do not all contend on bucket 0 by Paxos.
            row = connection.session.execute(prepared.select_origin, ()).one()
            read = prepared.select_origin.bind(())
            read.consistency_level = ConsistencyLevel.name_to_value[
                self.settings.serial_consistency
            ]
            if row is None or row[0] is None:
                row = connection.session.execute(read).one()
            if row is None or row[0] is None:
                made = now_ms()
                result = connection.session.execute(
                    prepared.make_origin, (self.settings.shards, made)
                )
                # Not applied: another process made it (its result holds only the
                # conditions' columns, so the cursor is read again), or the keyspace has
                # claims, whose origin only the cutover makes.
                row = (
                    (self.settings.shards, made)
                    if result.was_applied
                    else connection.session.execute(read).one()
                )
            if row is None or row[0] is None:
                raise StoreError(
                    f"{self.url}: the keyspace's feed of claims is not cut over to the "
                    "sequenced feed yet (or its cutover stopped half way): run 'cairn "
                    'cutover\' on it (docs/feed.md, "Cutover"). Nothing was written.'
                )
            origin = Origin(int(row[0]), int(row[1]))
            if not 1 <= origin.shards <= MAX_SHARDS:  # stored bytes: never trusted to size work
                raise StoreError(
                    f"{self.url}: the sequenced feed's origin says {origin.shards} shards; "
                    f"a keyspace has 1 to {MAX_SHARDS}. Nothing was written."
                )
            for future in close_windows(
                connection.session, prepared.close, origin.shards, origin.cursor
            ):
                future.result()
        except DRIVER_ERRORS as exc:
            raise StoreError(
                f"{self.url}: cannot read the sequenced feed's origin ({describe(exc)})"
            ) from exc
        return origin

    def write(self, batches: Sequence[tuple[Any, int, int]], sealed: bool) -> list[Intent]:
        """The intents of these batches ((aggregate, first version, span) each), written,
        each in a window not closed when it was checked; StoreError: nothing to store."""
        shards = self.origin().shards
        now = self.clock()
        intents = [Intent(timeuuid(now), i, v, n, sealed) for i, v, n in batches]
        try:
            self._insert(intents, shards)
            for _ in range(RESTAMPS):
                closes = self._closes({shard_of(i.id, shards) for i in intents})
                stale = [
                    n for n, i in enumerate(intents) if time_of(i.id) < closes[i.key(shards)[1]]
                ]
                if not stale:
                    return intents
                for n in stale:
                    intents[n] = self._restamp(intents[n], closes[intents[n].key(shards)[1]])
                self._insert([intents[n] for n in stale], shards)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot write its feed intent ({describe(exc)})") from exc
        raise StoreError(
            f"its feed intent's window was closed {RESTAMPS} times in a row before it was "
            "checked (is this writer's clock far behind, or its requests very slow?)"
        )

    def _restamp(self, stale: Intent, closed_until: int) -> Intent:
        """A new intent for a batch whose window was closed: in one not closed yet."""
        self.abandon(stale)  # its events never carry it: the sequencer voids it at once
        when = max(self.clock(), closed_until)
        return Intent(
            timeuuid(when), stale.originator_id, stale.originator_version, stale.size, stale.sealed
        )

    def _insert(self, intents: Sequence[Intent], shards: int) -> None:
        connection = self._connection()
        prepared = sequenced(connection.statements)
        futures = [
            connection.session.execute_async(
                prepared.insert_intent,
                (*i.key(shards), i.originator_id, i.originator_version, i.size, i.sealed),
            )
            for i in intents
        ]
        for future in futures:
            future.result()

    def _closes(self, shards: set[int]) -> dict[int, int]:
        """Each shard's close (ms), read at the store's consistency (QUORUM)."""
        connection = self._connection()
        prepared = sequenced(connection.statements)
        futures = {s: connection.session.execute_async(prepared.select_close, (s,)) for s in shards}
        closes = {}
        for shard, future in futures.items():
            row = future.result().one()
            closes[shard] = 0 if row is None or row[0] is None else int(row[0])
        return closes

    def abandon(self, intent: Intent) -> None:
        """Say on an intent that its events were never written (or never will carry it),
        so that the sequencer voids it at once. Sent without waiting: only a hint."""
        connection = self._connection()
        prepared = sequenced(connection.statements)
        with contextlib.suppress(*DRIVER_ERRORS):  # a hint: else the sequencer fences it later
            connection.session.execute_async(
                prepared.abandon_intent, intent.key(self.origin().shards)
            )
