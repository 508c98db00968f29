"""The feed: every event of an application's store, decoded, in one order that never changes.

How each store keeps that order (and its five guarantees) is told in ``docs/feed.md``;
read models that follow the feed are in :mod:`cairn.projections`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from cairn.domain import DomainEvent
from cairn.errors import AggregateForgotten
from cairn.mapping import Mapper
from cairn.renamed import Alias
from cairn.stores import Record, Store


class Feed:
    """Every event of the application's store, in one order that never changes.

    Positions increase along the feed (they need not be consecutive). Keep the
    last position you processed and read on from it: nothing is ever missed,
    and nothing appears behind a position once it has been read past.
    """

    recorder: Alias[Store] = Alias("store")  # deprecated: the old name of ``store``

    def __init__(self, store: Store, mapper: Mapper) -> None:
        self.store = store
        self.mapper = mapper

    def read(self, after: int = 0, limit: int = 1000) -> list[tuple[int, DomainEvent]]:
        """At most ``limit`` (position, event) pairs after position ``after``.

        Events of forgotten aggregates (crypto-shredded) are passed over: their
        positions stay, their content can no longer be read.
        """
        records = self.store.read_feed(after, limit)
        to_event = self.mapper.to_event
        try:
            return [(r.position, to_event(r)) for r in records]  # type: ignore[misc]
        except AggregateForgotten:
            return [(r.position, e) for r in records if (e := self._readable(r)) is not None]  # type: ignore[misc]

    def _readable(self, record: Record) -> DomainEvent | None:
        try:
            return self.mapper.to_event(record)
        except AggregateForgotten:
            return None

    def follow(
        self,
        after: int = 0,
        *,
        limit: int = 1000,
        poll_interval: float = 0.1,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[int, DomainEvent]]:
        """(position, event) pairs from ``after`` on, waiting for new ones until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            page = self.read(after, limit)
            yield from page
            if page:
                after = page[-1][0]
            if len(page) < limit:
                stop.wait(poll_interval)
