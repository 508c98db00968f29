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
