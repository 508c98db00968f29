"""The seed's "Everything in one app": an aggregate whose root entity controls a
cluster of entities and value objects, saved in atomic batches, encrypted, and
snapshotted every second event.

The names are the seed's (``ExampleAggregateRoot``, ``Example``,
``create_example_aggregate``, ``ExampleSnapshottingPolicy``,
``EverythingApplication`` and its ``example_repository``,
``snapshot_strategy`` and ``entity_event_store``), kept so the seed's
scenario reads the same here.
"""

from __future__ import annotations

import sqlite3
from typing import Any
from uuid import UUID, uuid4

from cairn import (
    Aggregate,
    Application,
    DomainEvent,
    Entity,
    Projection,
    Repository,
    SnapshottingPolicy,
    attribute,
)


class Example(Entity):
    """An entity controlled by the aggregate root: it exists only inside the aggregate."""


class ExampleAggregateRoot(Aggregate):
    """Root entity of the example aggregate."""

    class Event(Aggregate.Event):
        """Layer supertype of this aggregate's events."""

    class Created(Event, Aggregate.Created):
        """Published when the aggregate is created."""

        foo: str

    class AttributeChanged(Event, Aggregate.AttributeChanged):
        """Published when an attribute of the aggregate is changed."""

    class Discarded(Event, Aggregate.Discarded):
        """Published when the aggregate is discarded."""

    class ExampleCreated(Event):
        """Published when an "example" entity in the aggregate is created."""

        example_id: UUID

        def apply(self, aggregate: Any) -> None:
            aggregate._examples[str(self.example_id)] = Example(self.example_id)

    def __init__(self, foo: str) -> None:
        self._foo = foo
        self._examples: dict[str, Example] = {}

    @attribute
    def foo(self) -> str:
        """An attribute whose changes are events."""
        return self._foo

    def count_examples(self) -> int:
        return len(self._examples)

    def create_new_example(self) -> Example:
        self.trigger_event(ExampleAggregateRoot.ExampleCreated, example_id=uuid4())
        return list(self._examples.values())[-1]


def create_example_aggregate(foo: str) -> ExampleAggregateRoot:
    """Factory of the example aggregate (its Created event is pending until saved)."""
    return ExampleAggregateRoot.create(foo=foo)


class ExampleSnapshottingPolicy(SnapshottingPolicy):
    """Snapshots example aggregates every ``period`` events (2, as in the seed)."""

    def __init__(
        self, example_repository: Repository[ExampleAggregateRoot], period: int = 2
    ) -> None:
        super().__init__(example_repository, period)

    def trigger(self, event: DomainEvent) -> bool:
        return isinstance(event, ExampleAggregateRoot.Event) and super().trigger(event)


class EverythingApplication(Application):
    """The seed's application: encrypted, snapshotting, over any store."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entity_event_store = self.events
        self.snapshot_strategy = self.snapshots
        self.example_repository: Repository[ExampleAggregateRoot] = self.repository
        self.snapshotting_policy = ExampleSnapshottingPolicy(self.example_repository)
        self.subscribe(self.snapshotting_policy)


class ExampleIndex(Projection[sqlite3.Connection]):
    """A read model of the example aggregates: one row each, kept by following the feed.

    Run it with ``ProjectionRunner(app.feed, ExampleIndex(), SQLiteViews(path))``. It is
    given only the events it declares in ``topics``: the store passes over the others.
    """

    name = "example_index"
    topics = (
        ExampleAggregateRoot.Created,
        ExampleAggregateRoot.AttributeChanged,
        ExampleAggregateRoot.ExampleCreated,
        ExampleAggregateRoot.Discarded,
    )
    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS example_index (id TEXT PRIMARY KEY, foo TEXT, "
        "examples INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL, discarded INTEGER NOT NULL DEFAULT 0)"
    )

    def setup(self, tx: sqlite3.Connection) -> None:
        tx.execute(self.SCHEMA)

    def process(self, tx: sqlite3.Connection, event: DomainEvent) -> None:
        key, version = str(event.originator_id), event.originator_version + 1
        if isinstance(event, ExampleAggregateRoot.Created):
            tx.execute(
                "INSERT INTO example_index (id, foo, version) VALUES (?, ?, ?)",
                (key, event.foo, version),
            )
        elif isinstance(event, ExampleAggregateRoot.AttributeChanged) and event.name == "_foo":
            tx.execute(
                "UPDATE example_index SET foo = ?, version = ? WHERE id = ?",
                (event.value, version, key),
            )
        elif isinstance(event, ExampleAggregateRoot.ExampleCreated):
            tx.execute(
                "UPDATE example_index SET examples = examples + 1, version = ? WHERE id = ?",
                (version, key),
            )
        elif isinstance(event, ExampleAggregateRoot.Discarded):
            tx.execute(
                "UPDATE example_index SET discarded = 1, version = ? WHERE id = ?", (version, key)
            )
