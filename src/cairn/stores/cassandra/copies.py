"""Feed rows carrying their events (feed=sequenced): each published row holds a copy of its
batch's records, so that a reader catching up reads a page in one query (docs/feed.md,
"Feed rows carrying their events").

The sequencer writes a copy after it publishes a batch, from the rows it resolved the batch
by (:func:`made`); a reader uses a copy only when it matches its row (:func:`records`), and
resolves the batch from its events otherwise; the tools that rewrite events (``cairn
upgrade``, ``cairn rotate-key``) make the copies again afterwards (:func:`refresh`). Every
copy is written ``USING TIMESTAMP`` the newest write time of the rows it copies: a rewrite
(a Paxos round on the aggregate's partition) gives its rows a later one, so a copy of the
rewritten rows wins over a copy of the rows before, whichever is written last.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from cassandra.query import BatchStatement, BatchType

from cairn.stores.cassandra.feed import INDEX_BITS
from cairn.stores.cassandra.fetch import ClaimRow
from cairn.stores.cassandra.resolution import carried
from cairn.stores.contract import Record

# The most data (bytes, topics and data) one batch's copy holds; a larger batch is not
# copied, and readers read it from its events. It keeps a feed row, and a reader's fetch
# of 100 rows (at most 6.4 MiB), well within the server's 16 MiB limits on a request and
# a mutation, while a batch of typical events (a few hundred bytes each) is copied up to
# a hundred events or more.
COPY_BOUND = 64 * 1024
# Rows a refresh of the copies reads (and events reads it sends) at once.
REFRESH_ROWS = 100
# The data of the copies written in one request (an unlogged batch on one bucket's
# partition: one mutation, which costs the node a fraction of one write per row).
WRITE_BYTES = 256 * 1024

Copy = tuple[int, Any]  # (its timestamp, its value: (intent, [(topic, data), ...]))
# An event row as the sequencer reads it: (version, topic, data, writetime, intent).
Row = tuple[Any, ...]

log = logging.getLogger(__name__)


def made(rows: Sequence[Row], first: int, size: int, intent: Any) -> Copy | None:
    """The copy of a batch of ``size`` versions from ``first`` whose rows (as carried by its
    intent, in version order) are ``rows``; None if they are not all there, or too large."""
    if len(rows) != size or any(row[0] != first + n for n, row in enumerate(rows)):
        return None
    if sum(len(row[1]) + len(row[2] or b"") for row in rows) > COPY_BOUND:
        return None
    return newest(rows), (intent, [(row[1], row[2]) for row in rows])


def newest(rows: Sequence[Row]) -> int:
    """The newest write time of a batch's rows: its copy's timestamp."""
    return max(row[3] or 0 for row in rows)


def matches(claim: ClaimRow) -> bool:
    """Whether a published row's copy is of its batch, as far as a look tells (its intent
    and its number of records): then its events need not be read."""
    copy = claim.copy
    return (
        isinstance(copy, tuple)
        and len(copy) == 2
        and copy[0] == claim.intent
        and isinstance(copy[1], list)
        and len(copy[1]) == claim.size
    )


def records(claim: ClaimRow) -> list[Record] | None:
    """A published batch's records, from its row's copy: None unless the copy is of the
    intent the row names and holds exactly its ``size`` records, each a topic and data.
    The row says which records these are (aggregate, versions, positions); the copy gives
    only their topics and data, which the mapper checks as it checks any event row's."""
    if not matches(claim):
        return None
    first = claim.originator_version
    base = (claim.position << INDEX_BITS) + 1  # (and the record's place in its batch)
    found = []
    for n, item in enumerate(claim.copy[1]):
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], bytes)
        ):
            log.warning(
                "the feed's position %d holds a malformed copy of its batch (aggregate %s): "
                "read from its events instead",
                claim.position,
                claim.originator_id,
            )
            return None
        found.append(Record(claim.originator_id, first + n, item[0], item[1], base + n))
    return found


def write_all(
    session: Any, prepared: Any, bucket: int, copies: Sequence[tuple[int, Copy]]
) -> list[Any]:
    """Write copies at published positions of one bucket, ``(position, copy)``: sent, in
    unlogged batches on the bucket's partition of at most about WRITE_BYTES each, every
    copy at its own timestamp (the futures returned)."""
    sent, batch, size = [], BatchStatement(batch_type=BatchType.UNLOGGED), 0
    for position, (timestamp, value) in copies:
        batch.add(prepared.write_copy, (timestamp, value, bucket, position))
        size += sum(len(topic) + len(data) for topic, data in value[1])
        if size >= WRITE_BYTES:
            sent.append(session.execute_async(batch))
            batch, size = BatchStatement(batch_type=BatchType.UNLOGGED), 0
    if len(batch):
        sent.append(session.execute_async(batch))
    return sent


def refresh(
    session: Any,
    prepared: Any,
    first: int,
    feed_bucket: int,
    progress: Callable[[int], None],
) -> int:
    """Make every published row's copy again from its batch's rows as they are now, from
    position ``first`` to the head (or delete it, USING TIMESTAMP the rows' newest write
    time, if they are no longer copied: too large now); how many rows were passed over.
    Claims made before a cutover (rows without an intent) have no copy."""
    position, done = first, 0
    while True:
        bucket = position // feed_bucket
        found = list(session.execute(prepared.select_to_copy, (bucket, position, REFRESH_ROWS)))
        if not found:
            position = (bucket + 1) * feed_bucket
            following = session.execute(prepared.select_to_copy, (bucket + 1, position, 1))
            if following.one() is None:
                return done
            continue
        position = found[-1][0] + 1
        # (A copy alone: not published. No intent: a claim made before a cutover.)
        rows = [row for row in found if row[1] is not None and row[4] is not None]
        reads = [
            session.execute_async(prepared.select_marks, (oid, version, version + size))
            for _, oid, version, size, _ in rows
        ]
        copies, writes = [], []
        for (at, _, version, size, intent), read in zip(rows, reads, strict=True):
            stored = carried(list(read.result()), version, intent) or []
            if not stored:
                continue  # (a published batch's rows are stored: never here)
            copy = made(stored, version, size, intent)
            if copy is not None:
                copies.append((at, copy))
            else:
                params = (newest(stored), bucket, at)
                writes.append(session.execute_async(prepared.delete_copy, params))
        writes += write_all(session, prepared, bucket, copies)
        for future in writes:
            future.result()
        done += len(rows)
        progress(done)
