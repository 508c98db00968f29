"""The feed: every event of an application's store, decoded, in one order that never changes.

How each store keeps that order (and its five guarantees) is told in ``docs/feed.md``;
read models that follow the feed are in :mod:`cairn.projections`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from uuid import UUID

from cairn.crypto import own_key_hint
from cairn.domain import DomainEvent, topic_of
from cairn.errors import AggregateForgotten, UnreadableRecord
from cairn.mapping import Mapper
from cairn.model import Model
from cairn.renamed import Alias
from cairn.stores import FeedPage, Record, Store
from cairn.stores.contract import feed_after, feed_limit, feed_topics

# What a feed can be filtered by: event classes, or their topics ("module:Class").
Topics = Iterable[type[DomainEvent] | str]


class Feed:
    """Every event of the application's store, in one order that never changes.

    Positions increase along the feed (they need not be consecutive). Keep the
    last position you processed and read on from it: nothing is ever missed,
    and nothing appears behind a position once it has been read past. With
    ``topics``, only events of those classes are read (and decoded); a page's
    ``next_after`` is then the position to keep, as it also passes the events
    left out.
    """

    recorder: Alias[Store] = Alias("store")  # deprecated: the old name of ``store``

    def __init__(self, store: Store, mapper: Mapper) -> None:
        self.store = store
        self.mapper = mapper

    def read(
        self, after: int = 0, limit: int = 1000, *, topics: Topics | None = None
    ) -> FeedPage[tuple[int, DomainEvent]]:
        """At most ``limit`` (position, event) pairs after position ``after``; with
        ``topics`` (event classes or their topics), only events of those exact classes
        (a subclass has a topic of its own: name it too).

        The page is a list, with ``next_after`` (read on from it) and ``caught_up``
        (:class:`~cairn.stores.FeedPage`). Events of forgotten aggregates
        (crypto-shredded) are passed over: their positions stay, their content can
        no longer be read.
        """
        records = self.store.read_feed(after, limit, topics=topics_of(topics, self.mapper.model))
        to_event = self.mapper.to_event
        try:
            pairs = [(r.position, to_event(r)) for r in records]
        except (AggregateForgotten, UnreadableRecord):  # (the slow path: which one, and why)
            pairs = [(r.position, e) for r in records if (e := self._readable(r)) is not None]
        return FeedPage(pairs, records.next_after, records.caught_up)  # type: ignore[arg-type]

    def _readable(self, record: Record) -> DomainEvent | None:
        try:
            return self.mapper.to_event(record)
        except AggregateForgotten:
            return None
        except UnreadableRecord as exc:
            raise explained(exc, self.mapper, self.store, record.originator_id) from None

    def follow(
        self,
        after: int = 0,
        *,
        limit: int = 1000,
        poll_interval: float = 0.1,
        stop: threading.Event | None = None,
        topics: Topics | None = None,
    ) -> Iterator[tuple[int, DomainEvent]]:
        """(position, event) pairs from ``after`` on (of ``topics`` only, if given), waiting
        ``poll_interval`` seconds whenever it has caught up, until ``stop`` is set.

        Its arguments are checked now, not at the first pair (ValueError).
        """
        feed_after(after)
        feed_limit(limit)
        if not poll_interval > 0:  # (0 would poll without pause; also refuses nan)
            raise ValueError(
                f"poll_interval must be a number of seconds above 0, not {poll_interval!r}"
            )
        return self._follow(
            after,
            limit,
            poll_interval,
            stop or threading.Event(),
            topics_of(topics, self.mapper.model),
        )

    def _follow(
        self,
        after: int,
        limit: int,
        poll_interval: float,
        stop: threading.Event,
        topics: tuple[str, ...] | None,
    ) -> Iterator[tuple[int, DomainEvent]]:
        while not stop.is_set():
            page = self.read(after, limit, topics=topics)
            yield from page
            after = page.next_after
            if page.caught_up:
                stop.wait(poll_interval)


def explained(
    error: UnreadableRecord, mapper: Mapper, store: Store, originator_id: UUID
) -> UnreadableRecord:
    """``error``, and what to do about it when a reader with the master key alone meets an
    aggregate that has a data key of its own (``key_per_aggregate``)."""
    if mapper.data_keys is None and mapper.cipher is not None:
        return own_key_hint(error, store, originator_id)
    return error


def topics_of(topics: Topics | None, model: Model | None = None) -> tuple[str, ...] | None:
    """The topics of these event classes (topics given as text kept as they are), checked;
    with the ``model``, an event class's records stored under a former topic of it too
    (a renamed or moved class: ``docs/evolution.md``)."""
    if topics is None:
        return None
    if isinstance(topics, str | type):
        raise ValueError(
            "topics is a collection of event classes or topics, not one: write topics=[...]"
        )
    names: list[str] = []
    for topic in topics:
        if isinstance(topic, type):
            if not issubclass(topic, DomainEvent):
                raise ValueError(f"{topic.__qualname__} is not an event class (a DomainEvent)")
            names.extend(model.topics_of(topic) if model is not None else [topic_of(topic)])
        else:
            names.append(topic)
    return feed_topics(names)
