"""What became of a batch that announced itself to the feed (a claim of a position, or an
intent), told by the rows at its versions; and the fence that settles one abandoned by its
writer. The claims' readers (feed.py) and the sequencer (sequencer.py) share them: the
protocol is told once, in ``docs/feed.md`` ("Reading", "Fencing").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cairn.errors import FenceNeedsKey, StoreError
from cairn.stores.cassandra.outcomes import DRIVER_ERRORS, describe
from cairn.stores.cassandra.session import Connection
from cairn.stores.contract import Fences

log = logging.getLogger(__name__)

Row = tuple[Any, ...]  # an event row as read for resolving: (version, ..., mark)


def carried(rows: Sequence[Row], first: int, mark: Any) -> list[Row] | None:
    """The rows of a batch that carry its ``mark`` (its claim's position, or its intent),
    in version order; [] if another batch holds its first version (it lost its race, or
    was saved with the feed off); None if that version is not stored (yet).

    ``rows`` are those read from the batch's ``first`` version on, each ending in the
    mark it carries."""
    if not rows or rows[0][0] != first:
        return None
    if rows[0][-1] != mark:
        return []
    return [row for row in rows if row[-1] == mark]


SHARED_READ = 100  # aggregates one marks read may name (IN): a server's guardrail may cap it
MERGED_SPAN = 1000  # versions one aggregate's marks read may span; wider: a read per batch


class Marks:
    """What the rows of one aggregate's versions ``[low, high)`` carry, from a read that may
    cover more (more versions, or more aggregates): ``rows()``, in version order, each
    ``(version, mark)``; a driver error if the read failed."""

    __slots__ = ("_high", "_id", "_low", "_read")

    def __init__(self, read: _Read, originator_id: Any, low: int, high: int) -> None:
        self._read, self._id, self._low, self._high = read, originator_id, low, high

    def rows(self) -> list[Row]:
        found = self._read.rows().get(self._id, [])
        return [row for row in found if self._low <= row[0] < self._high]


class _Read:
    """One read, sent: its rows by aggregate, once, however many ask."""

    __slots__ = ("_future", "_id", "_rows")

    def __init__(self, future: Any, originator_id: Any = None) -> None:
        self._future, self._id = future, originator_id  # (None: rows name their aggregate)
        self._rows: dict[Any, list[Row]] | None = None

    def rows(self) -> dict[Any, list[Row]]:
        if self._rows is None:
            result = self._future.result()
            if self._id is not None:
                self._rows = {self._id: list(result)}  # (every page, were there more than one)
            else:
                self._rows = {}
                for originator_id, *row in result:
                    self._rows.setdefault(originator_id, []).append(tuple(row))
        return self._rows


def read_marks(
    session: Any, single: Any, shared: Any, spans: Sequence[tuple[Any, int, int]]
) -> list[Marks]:
    """What the rows of each ``(aggregate, low, high)`` carry, read at once, in as few
    requests as the spans allow: the spans of one aggregate share one read that covers
    them all (the batches a sequencer finds of one aggregate follow on, unless far
    apart); aggregates whose spans are the same share one (``shared``, by IN: the
    creations of many aggregates, typically); any other is a read of its own
    (``single``). Statements select ``(version, mark)``, ``shared`` the aggregate first."""
    by_aggregate: dict[Any, list[int]] = {}
    for n, span in enumerate(spans):
        by_aggregate.setdefault(span[0], []).append(n)
    found: list[Marks | None] = [None] * len(spans)
    covering: dict[tuple[int, int], list[tuple[Any, list[int]]]] = {}  # a span: its aggregates
    for originator_id, members in by_aggregate.items():
        low = min(spans[n][1] for n in members)
        high = max(spans[n][2] for n in members)
        if high - low <= MERGED_SPAN:
            covering.setdefault((low, high), []).append((originator_id, members))
            continue
        for n in members:
            found[n] = Marks(
                _Read(session.execute_async(single, spans[n]), originator_id), *spans[n]
            )
    for (low, high), group in covering.items():
        for start in range(0, len(group), SHARED_READ):
            part = group[start : start + SHARED_READ]
            if len(part) == 1:
                only = part[0][0]
                read = _Read(session.execute_async(single, (only, low, high)), only)
            else:
                ids = [originator_id for originator_id, _ in part]
                read = _Read(session.execute_async(shared, (ids, low, high)))
            for _, members in part:
                for n in members:
                    found[n] = Marks(read, *spans[n])
    return found  # type: ignore[return-value]


@dataclass(frozen=True)
class Abandoned:
    """A claim or intent whose events were missing past ``feed_fence_after``: to fence."""

    originator_id: Any
    originator_version: int  # its batch's first
    sealed: bool | None  # its writer's fences are sealed: so must this fence be
    mark: Any  # what the fence's row carries: the claim's position, or the intent
    place: str  # where the feed stops without the fence, in words: "position 7"
    kind: str  # "claim" or "intent"
    age: float  # seconds since it was written


def fence(url: str, connection: Connection, fences: Fences, insert: Any, it: Abandoned) -> None:
    """Fence off an abandoned claim or intent: a no-op record at its first version, with
    Paxos (``insert``: the events' conditional insert, the mark in its last column).

    Paxos first completes any write of the batch still in progress; then either the batch
    is there (the insert is not applied) or the fence is, and the batch's writer can never
    store it (its insert is not applied: ConcurrencyError). The fence is the store's (its
    application's: sealed under its key). One whose writer sealed its fences is never
    fenced by a process that cannot seal one (FenceNeedsKey): the application would
    refuse an unsealed fence. Resolve it again after, by a read at the serial level.
    """
    if it.sealed and not fences.sealed:
        raise FenceNeedsKey(
            f"{url}: cannot read the feed past {it.place}: its {it.kind} "
            f"(aggregate {it.originator_id} version {it.originator_version}) was "
            "abandoned by its writer and must be fenced off, with a fence sealed by the "
            "application's key, which this reader was not given (the store is encrypted, "
            "and its application would refuse an unsealed fence). Nothing was written. "
            "Read the feed once with the key (an application with its cipher; $CAIRN_KEY "
            "for the cairn command) to fence it off; readers without it then read on."
        )
    made = fences.make(it.originator_id, it.originator_version)
    row = (made.originator_id, made.originator_version, made.topic, made.data, it.mark)
    try:
        connection.session.execute(insert, row)
    except DRIVER_ERRORS as exc:
        raise StoreError(
            f"{url}: cannot read the feed past {it.place}: its {it.kind} "
            f"(aggregate {it.originator_id} version {it.originator_version}) is "
            f"abandoned, and fencing it off failed: {describe(exc)}"
        ) from exc
    log.info(
        "%s: fenced off feed %s at %s (aggregate %s version %d), abandoned for %.1f s",
        url,
        it.kind,
        it.place,
        it.originator_id,
        it.originator_version,
        it.age,
    )
